"""An SSE client for the end-to-end tests (GET /api/events): one raw
socket, the chunked body decoded as it arrives, events parsed as SPEC 8
writes them; and a Follower that keeps one stream open across restarts of
the server, resuming with Last-Event-ID."""
import json
import socket
import threading
import time


class Stream:
    """One SSE connection; events() decodes the chunked body as it comes."""

    def __init__(self, r, token=None, query="", headers=None):
        self.s = socket.create_connection(("127.0.0.1", r.port), timeout=10)
        h = {"Host": "x", "Accept": "text/event-stream"}
        if token:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        req = f"GET /api/events{query} HTTP/1.1\r\n" + \
            "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        self.s.sendall(req.encode())
        self.raw = b""
        while b"\r\n\r\n" not in self.raw:
            b = self.s.recv(65536)
            if not b:
                break
            self.raw += b
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip()
                        for k, _, v in (ln.partition(":") for ln in lines[1:])}
        self.text = ""
        self.ended = False

    def body(self):
        """The rest of a complete (non-stream) response."""
        n = int(self.headers.get("content-length", "0"))
        while len(self.raw) < n:
            b = self.s.recv(65536)
            if not b:
                break
            self.raw += b
        return self.raw[:n]

    def _decode(self):
        while True:
            i = self.raw.find(b"\r\n")
            if i < 0:
                return
            size = int(self.raw[:i].split(b";")[0], 16)
            if size == 0:
                self.ended = True
                return
            if len(self.raw) < i + 2 + size + 2:
                return
            self.text += self.raw[i + 2:i + 2 + size].decode()
            self.raw = self.raw[i + 2 + size + 2:]

    def next(self, timeout=10):
        """The next block: {"id", "event", "data"} or {"comment"}; None on
        timeout or end of stream."""
        deadline = time.time() + timeout
        while "\n\n" not in self.text:
            if self.ended or time.time() > deadline:
                return None
            self.s.settimeout(max(0.05, deadline - time.time()))
            try:
                b = self.s.recv(65536)
            except socket.timeout:
                return None
            if not b:
                self.ended = True
                return None
            self.raw += b
            self._decode()
        block, _, self.text = self.text.partition("\n\n")
        ev = {}
        for ln in block.split("\n"):
            k, _, v = ln.partition(":")
            v = v[1:] if v.startswith(" ") else v
            if k == "":
                ev["comment"] = v
            elif k == "data":
                ev["data"] = (ev["data"] + "\n" + v) if "data" in ev else v
            else:
                ev[k] = v
        if "data" in ev:
            ev["data"] = json.loads(ev["data"])
        return ev

    def event(self, pred=lambda e: True, timeout=15):
        """The next event (comments skipped) satisfying pred; events that do
        not are collected in self.skipped."""
        self.skipped = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            e = self.next(timeout=deadline - time.time())
            if e is None:
                break
            if "id" not in e:
                continue
            if pred(e):
                return e
            self.skipped.append(e)
        raise AssertionError(f"no matching event; skipped {self.skipped[:5]!r}")

    def close(self):
        self.s.close()


class Follower(threading.Thread):
    """Reads r's event stream in a thread, as a browser's EventSource
    would: when the connection ends (the server died), it connects again
    (until the server answers) with Last-Event-ID = the last id received.
    events: every event received, in order; connects: streams opened;
    resumed: the Last-Event-ID of each reconnection."""

    def __init__(self, r, token, query=""):
        super().__init__(daemon=True)
        self.r, self.token, self.query = r, token, query
        self.events, self.resumed = [], []
        self.connects = 0
        self.last = None
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            h = {} if self.last is None else {"Last-Event-ID": str(self.last)}
            try:
                s = Stream(self.r, self.token, query=self.query, headers=h)
            except (OSError, IndexError, ValueError):
                time.sleep(0.05)  # down, or died before its response head
                continue
            try:
                if s.status != 200:
                    time.sleep(0.1)
                    continue
                self.connects += 1
                if self.last is not None:
                    self.resumed.append(self.last)
                while not self._halt.is_set():
                    e = s.next(timeout=0.2)
                    if e is None:
                        if s.ended:
                            break
                        continue
                    if "id" in e:
                        self.events.append(e)
                        self.last = int(e["id"])
            except (OSError, ValueError):
                pass  # reset by the dying server, or a block cut short
            finally:
                s.close()

    def wait_connected(self, n=1, timeout=10):
        """Waits until n streams have been opened."""
        deadline = time.time() + timeout
        while self.connects < n:
            if time.time() > deadline:
                raise AssertionError(f"{self.connects} event streams opened, not {n}")
            time.sleep(0.02)

    def wait_for(self, last_id, timeout=20):
        """Waits until the id last_id has been received."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.last is not None and self.last >= last_id:
                return
            time.sleep(0.05)
        raise AssertionError(f"the stream reached id {self.last}, not {last_id}")

    def stop(self):
        self._halt.set()
        self.join(5)
