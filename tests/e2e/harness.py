"""Shared pieces of the end-to-end tests: a reeld process on a free port
against its own database in the test cluster (tests/run starts the cluster
and exports REELD_TEST_PGURL / REELD_TEST_PGDIR / REELD_TEST_PGPORT), HTTP
helpers, and the PASS/FAIL line protocol tests/run counts."""
import atexit
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import http.client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("REELD_BIN", os.path.join(ROOT, "build", "reeld"))
PGBIN = "/usr/lib/postgresql/15/bin"

_failed = 0


def check(name, fn):
    """Runs fn(); prints PASS name, or FAIL name: reason."""
    global _failed
    try:
        fn()
        print(f"PASS {name}", flush=True)
    except Exception as e:  # noqa: BLE001 - any failure is a test failure
        _failed += 1
        msg = str(e).replace("\n", " ")[:300]
        print(f"FAIL {name}: {type(e).__name__}: {msg}", flush=True)
        traceback.print_exc(file=sys.stderr)


def done():
    sys.exit(1 if _failed else 0)


def eq(a, b, what=""):
    if a != b:
        raise AssertionError(f"{what} expected {b!r}, got {a!r}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def pg_env():
    url = os.environ.get("REELD_TEST_PGURL")
    if not url:
        raise RuntimeError("REELD_TEST_PGURL is not set: run through tests/run")
    return url


def psql(sql, db="reeld"):
    d, port = os.environ["REELD_TEST_PGDIR"], os.environ["REELD_TEST_PGPORT"]
    out = subprocess.run([f"{PGBIN}/psql", "-h", d, "-p", port, "-U", "reeld", "-d", db,
                          "-tAX", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout.strip()


def new_database():
    name = "e2e_" + secrets.token_hex(4)
    psql(f"CREATE DATABASE {name}", db="postgres")
    return name


class Reeld:
    """A reeld serve process with its own data dir and database."""

    def __init__(self, env=None, db=None):
        self.tmp = tempfile.mkdtemp(prefix="reeld-e2e-")
        self.port = free_port()
        self.db = db or new_database()
        self.env = dict(os.environ)
        base = pg_env()
        self.dburl = " ".join(p for p in base.split() if not p.startswith("dbname=")) + \
            f" dbname={self.db}"
        self.env.update({
            "REELD_LISTEN": f"127.0.0.1:{self.port}",
            "REELD_DATA_DIR": self.tmp,
            "DATABASE_URL": self.dburl,
            "REELD_LOG": "info",
        })
        if env:
            self.env.update(env)
        self.proc = None
        self.logf = open(os.path.join(self.tmp, "reeld.log"), "w+")
        atexit.register(self._cleanup)

    def _cleanup(self):
        """At exit: stop the process if still running, remove the data dir
        (kept when REELD_TEST_KEEP is set, for a look after a failure)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not os.environ.get("REELD_TEST_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, timeout=20):
        """Starts reeld serve (again after stop(): same port, data dir and
        database; the log file goes on)."""
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        self.proc = subprocess.Popen([BIN, "serve"], env=self.env, stdout=subprocess.PIPE,
                                     stderr=self.logf, text=True)
        deadline = time.time() + timeout
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError("reeld did not start: " + line + self.log()[-2000:])
        while time.time() < deadline:
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("reeld not answering")

    def log(self):
        # a file description of its own: seeking self.logf, which the
        # child writes through, would move the child's write offset
        with open(self.logf.name) as f:
            return f.read()

    def log_records(self, msg=None):
        """The JSON log lines (those with msg when given), parsed."""
        out = []
        for ln in self.log().splitlines():
            if not ln.startswith("{"):
                continue
            try:
                rec = json.loads(ln)
            except ValueError:
                continue  # a line cut short by a SIGKILL
            if msg is None or rec.get("msg") == msg:
                out.append(rec)
        return out

    def stop(self, sig=15, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def token(self, sub, org=None, role="member", ttl=3600, email=None, name=None):
        args = [BIN, "token", "--sub", sub, "--role", role, "--ttl", str(ttl)]
        if org:
            args += ["--org", org]
        if email:
            args += ["--email", email]
        if name:
            args += ["--name", name]
        out = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return out.stdout.strip()

    def request(self, method, path, body=None, token=None, headers=None, timeout=15):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        c.close()
        try:
            js = json.loads(raw) if raw else None
        except ValueError:
            js = None
        return r.status, js, dict((k.lower(), v) for k, v in r.getheaders()), raw

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def raw(self, data, read_timeout=5, until_close=True):
        """Sends raw bytes on one connection; returns everything read."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=read_timeout)
        s.sendall(data)
        out = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
                if not until_close and b"\r\n\r\n" in out:
                    break
        except socket.timeout:
            pass
        s.close()
        return out


def assert_error(status, js, want_status, want_code):
    eq(status, want_status, "status")
    if not js or "error" not in js:
        raise AssertionError(f"no error envelope: {js!r}")
    eq(js["error"].get("code"), want_code, "error.code")
    if not js["error"].get("request_id") or not js["error"].get("message"):
        raise AssertionError(f"envelope lacks request_id/message: {js!r}")


def run_all(ns):
    """Runs, in file order, every function of the test module whose name
    does not start with '_' (helpers do). The module then cleans up and
    calls done(), which exits with the verdict."""
    import inspect
    fns = [f for n, f in ns.items() if inspect.isfunction(f) and f.__module__ == "__main__"
           and not n.startswith("_")]
    for f in fns:
        check(f.__name__, f)
