"""HTTP conventions over real sockets (SPEC 5): the error envelope,
X-Request-Id, keep-alive and pipelining, limits and timeouts."""
import socket
import subprocess
import threading
import time

from harness import run_all, Reeld, assert_error, check, done, eq

r = Reeld(env={"REELD_HEADER_TIMEOUT": "2", "REELD_MAX_CONNS": "50",
               "REELD_MAX_JSON_BYTES": "4096", "REELD_MAX_HEADER_BYTES": "8192"}).start()
tok = r.token("http-alice")


def unknown_route_is_404_envelope():
    st, js, h, _ = r.get("/nope")
    assert_error(st, js, 404, "not_found")


def wrong_method_is_405_with_allow():
    st, js, h, _ = r.request("DELETE", "/healthz")
    eq(st, 405)
    eq(js["error"]["code"], "invalid_request")
    eq(h.get("allow"), "GET")


def request_id_is_generated_and_echoed():
    st, _, h, _ = r.get("/healthz")
    if len(h.get("x-request-id", "")) < 16:
        raise AssertionError("no generated X-Request-Id")
    st, js, h, _ = r.get("/nope", headers={"X-Request-Id": "abc-123"})
    eq(h.get("x-request-id"), "abc-123")
    eq(js["error"]["request_id"], "abc-123")


def unsafe_request_id_is_replaced():
    st, _, h, _ = r.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    if h.get("x-request-id") == "bad id with spaces":
        raise AssertionError("unsafe id echoed")


def keep_alive_serves_several_requests():
    out = r.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3 +
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    eq(out.count(b"HTTP/1.1 200 OK"), 4, "responses")


def two_pipelined_requests_in_one_write_answer_in_order():
    out = r.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: first\r\n\r\n"
                b"GET /nope HTTP/1.1\r\nHost: x\r\nX-Request-Id: second\r\n"
                b"Connection: close\r\n\r\n")
    a, b = out.find(b"X-Request-Id: first"), out.find(b"X-Request-Id: second")
    if not (0 <= a < b):
        raise AssertionError(f"order wrong: {out[:400]!r}")
    if out.find(b"200 OK") > out.find(b"404 Not Found"):
        raise AssertionError("status order wrong")


def pipelined_db_request_then_static_keeps_order():
    req = (f"GET /api/organizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
           "X-Request-Id: dbfirst\r\n\r\n"
           "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: static2\r\n"
           "Connection: close\r\n\r\n").encode()
    out = r.raw(req)
    a, b = out.find(b"dbfirst"), out.find(b"static2")
    if not (0 <= a < b):
        raise AssertionError(f"order wrong: {out[:600]!r}")


def connection_close_is_honoured():
    s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
    s.close()
    if b"Connection: close" not in data:
        raise AssertionError("no Connection: close header")


def oversized_headers_get_431():
    big = b"X-Big: " + b"a" * 10000 + b"\r\n"
    out = r.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    if not out.startswith(b"HTTP/1.1 431"):
        raise AssertionError(out[:100])
    if b'"code":"invalid_request"' not in out:
        raise AssertionError("no envelope")


def oversized_json_gets_413():
    st, js, _, _ = r.post("/api/organizations", body='{"name":"' + "x" * 5000 + '"}',
                          token=tok)
    assert_error(st, js, 413, "payload_too_large")


def oversized_chunked_json_gets_413():
    chunk = b"x" * 3000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    out = r.raw(b"POST /api/organizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                tok.encode() + b"\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + body)
    if not out.startswith(b"HTTP/1.1 413"):
        raise AssertionError(out[:100])


def malformed_json_gets_400():
    st, js, _, _ = r.post("/api/organizations", body='{"name": "x",', token=tok)
    assert_error(st, js, 400, "invalid_request")
    st, js, _, _ = r.post("/api/organizations", body='{"name": "x"} trailing', token=tok)
    assert_error(st, js, 400, "invalid_request")
    st, js, _, _ = r.post("/api/organizations", body=b'{"name": "\xff\xfe"}', token=tok)
    assert_error(st, js, 400, "invalid_request")


def json_body_with_wrong_content_type_gets_415():
    st, js, _, _ = r.post("/api/organizations", body="name=x", token=tok,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(st, js, 415, "unsupported_media_type")


def garbage_request_line_gets_400():
    out = r.raw(b"\x00\x01garbage\r\n\r\n")
    if not out.startswith(b"HTTP/1.1 400"):
        raise AssertionError(out[:100])


def expect_100_continue_is_answered():
    s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
    body = b'{"name":"Continue Co"}'
    s.sendall(b"POST /api/organizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              tok.encode() + b"\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body))
    first = s.recv(4096)
    if not first.startswith(b"HTTP/1.1 100 Continue"):
        raise AssertionError(first[:80])
    s.sendall(body)
    rest = b""
    while b"\r\n\r\n" not in rest:
        rest += s.recv(4096)
    s.close()
    if b"201 Created" not in first + rest:
        raise AssertionError((first + rest)[:200])


def slow_client_is_closed_while_others_are_served():
    slow = socket.create_connection(("127.0.0.1", r.port), timeout=10)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes
    t0 = time.time()
    for _ in range(5):
        eq(r.get("/healthz")[0], 200)
    slow.settimeout(8)
    data = b""
    try:
        while True:
            b = slow.recv(4096)
            if not b:
                break
            data += b
    except socket.timeout:
        raise AssertionError("slow client not closed")
    waited = time.time() - t0
    if waited > 5:
        raise AssertionError(f"closed after {waited:.1f}s, header timeout is 2s")
    if data and not data.startswith(b"HTTP/1.1 408"):
        raise AssertionError(data[:80])


def connections_beyond_the_cap_get_503():
    held = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
            held.append(s)
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", r.port), timeout=5)
        data = extra.recv(4096)
        extra.close()
        if not data.startswith(b"HTTP/1.1 503"):
            raise AssertionError(data[:80])
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    eq(r.get("/healthz")[0], 200, "after releasing")


def slowhttptest_connections_are_dropped_and_healthz_answers():
    # Debian's slowhttptest in slow-headers mode (-H) with 500 connections
    # against a reeld whose header deadline is 2 s: its connections are
    # closed by reeld while /healthz keeps answering.
    r2 = Reeld(env={"REELD_HEADER_TIMEOUT": "2", "REELD_MAX_CONNS": "4096"}).start()
    answered = []

    def probe():
        t_end = time.time() + 8
        while time.time() < t_end:
            try:
                if r2.get("/healthz", timeout=3)[0] == 200:
                    answered.append(1)
            except OSError:
                pass
            time.sleep(0.2)

    try:
        slow = subprocess.Popen(["slowhttptest", "-H", "-c", "500", "-r", "200", "-i", "1",
                                 "-l", "8", "-u", f"http://127.0.0.1:{r2.port}/healthz",
                                 "-p", "3"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        th = threading.Thread(target=probe)
        th.start()
        text, _ = slow.communicate(timeout=60)
        th.join()
        if len(answered) < 20:
            raise AssertionError(f"/healthz answered only {len(answered)} times")
        if not any("closed" in ln.lower() for ln in text.splitlines()):
            raise AssertionError("no closed connections in slowhttptest's report")
        if r2.log().count("timed out reading request headers") + r2.log().count("408") == 0:
            raise AssertionError("reeld closed no connection at the header deadline")
    finally:
        r2.stop()


run_all(globals())
r.stop()
done()
