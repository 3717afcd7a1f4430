"""Helpers the pipeline and assistant tests share (test_pipeline,
test_pipeline_openai, test_chat, test_chat_openai): an upload through
tus-js-client that returns the new recording's id, the recording.status
values of one recording read from an SSE stream, a recording taken
through the pipeline to `completed`, and POST /api/chat/query on a raw
socket (sent, then read as SSE events or JSON)."""
import json
import os
import socket
import time

import sseutil
from harness import eq, psql
from tusutil import node


def upload_js(r, token, path, title, filetype="video/mp4"):
    """Uploads path with tus-js-client (256 KiB chunks); returns the id of
    the recording titled title."""
    res = node("upload.mjs", {"endpoint": f"http://127.0.0.1:{r.port}/api/uploads/",
                              "token": token, "file": path, "chunkSize": 256 * 1024,
                              "metadata": {"filename": os.path.basename(path),
                                           "filetype": filetype, "title": title}})
    if not res.get("ok"):
        raise AssertionError(f"upload failed: {res}")
    rid = psql(f"SELECT id FROM recordings WHERE title = '{title}'", db=r.db)
    if not rid:
        raise AssertionError("no recording for the upload")
    return rid


def statuses(stream, rid, until, timeout=120):
    """The recording.status values of rid on stream, up to and including
    the first one in until; returns them and that last event."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        e = stream.event(lambda e: e.get("event") == "recording.status"
                         and e["data"]["recording_id"] == rid,
                         timeout=deadline - time.time())
        seen.append(e["data"]["status"])
        if e["data"]["status"] in until:
            return seen, e
    raise AssertionError(f"statuses so far {seen}")


def record_completed(r, token, path, title, timeout=120):
    """Uploads path as title and waits for the pipeline to complete it;
    returns the recording's id."""
    s = sseutil.Stream(r, token)
    try:
        rid = upload_js(r, token, path, title)
        seen, _ = statuses(s, rid, {"completed", "error"}, timeout=timeout)
    finally:
        s.close()
    eq(seen[-1], "completed", f"{title} status")
    return rid


def chat_send(r, token, body, sse=True, timeout=30, rcvbuf=None):
    """Sends POST /api/chat/query on a new socket (Connection: close;
    SO_RCVBUF rcvbuf when given) and returns the socket, unread."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", r.port))
    data = json.dumps(body).encode()
    accept = "text/event-stream" if sse else "application/json"
    s.sendall((f"POST /api/chat/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: application/json\r\nAccept: {accept}\r\n"
               f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
    return s


def sse_events(text):
    """The (event, data) pairs of an SSE body whose data is JSON."""
    events = []
    for block in text.split("\n\n"):
        ev, dl = None, []
        for ln in block.split("\n"):
            if ln.startswith("event:"):
                ev = ln[6:].strip()
            elif ln.startswith("data:"):
                dl.append(ln[5:].lstrip(" "))
        if ev:
            events.append((ev, json.loads("\n".join(dl))))
    return events


def chat_read(s, sse=True, raw=b""):
    """Reads the answer on s to its end (raw: what was read already) and
    closes s; returns (status, headers, events) for an SSE answer (events:
    list of (event, data)) or (status, headers, json)."""
    buf = bytearray(raw)
    while True:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    s.close()
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdr = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if hdr.get("transfer-encoding") == "chunked":
        out, i = [], 0
        while i < len(body):
            j = body.find(b"\r\n", i)
            if j < 0:
                break  # cut short inside a chunk's size line
            n = int(body[i:j].split(b";")[0], 16)
            if n == 0:
                break
            out.append(body[j + 2:j + 2 + n])
            i = j + 4 + n
        body = b"".join(out)
    if status == 200 and sse:
        text = body.decode(errors="replace")
        if not text.endswith("\n\n"):  # cut short: the events that came whole
            text = text[:text.rfind("\n\n") + 2]
        return status, hdr, sse_events(text)
    return status, hdr, json.loads(body) if body else None


def chat_ask(r, token, body, sse=True, timeout=30):
    """POST /api/chat/query and its whole answer (see chat_read)."""
    return chat_read(chat_send(r, token, body, sse=sse, timeout=timeout), sse=sse)
