"""Media and publication over HTTP (SPEC 7, issue 3 items 4 and 5): the
video endpoint (whole file, ranges, HEAD, Bearer or signed URL, bounded
memory) and the publish / share-page flow (HTML and JSON, Markdown
rendered without raw HTML, signed video on the page, who may publish).

Recordings are made without the tus server: a row inserted with psql in
status 'uploaded' and the file placed under <data_dir>/storage/<key>, as
the storage module lays it out."""
import base64
import hashlib
import hmac
import http.client
import os
import socket
import sys
import time
import urllib.parse
import uuid

from harness import Reeld, assert_error, done, eq, psql, run_all

r = Reeld()
PUBLIC = f"http://127.0.0.1:{r.port}"
r.env["REELD_PUBLIC_URL"] = PUBLIC
r.start()


def _user_id(sub):
    return psql(f"SELECT id FROM users WHERE external_id = '{sub}'", db=r.db)


# One organization with an admin, the owner of the recordings (a member),
# another member; and an outsider in an organization of their own.
ADMIN = r.token("ms-admin")
ORG = r.post("/api/organizations", {"name": "Media Org"}, token=ADMIN)[1]["organization"]["id"]
OWNER = r.token("ms-owner", org=ORG, role="member")
MEMBER = r.token("ms-member", org=ORG, role="member")
OUTSIDER = r.token("ms-outsider")
r.post("/api/organizations", {"name": "Elsewhere"}, token=OUTSIDER)
for _t in (OWNER, MEMBER):
    r.get("/api/organizations/current", token=_t)  # mirrors the user and membership
OWNER_ID = _user_id("ms-owner")


def _q(s):
    return "NULL" if s is None else "'" + s.replace("'", "''") + "'"


def _recording(data, status="uploaded", title="Demo", ext="mp4", content_type="video/mp4",
               description=None):
    """Inserts a recording whose upload is complete, with its stored file."""
    rid = str(uuid.uuid4())
    key = f"org-{ORG}/recordings/{rid}.{ext}"
    path = os.path.join(r.tmp, "storage", key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    psql("INSERT INTO recordings (id, org_id, user_id, title, description, status, content_type,"
         " filename, size_bytes, upload_offset, storage_key) VALUES"
         f" ('{rid}', '{ORG}', '{OWNER_ID}', {_q(title)}, {_q(description)}, '{status}',"
         f" {_q(content_type)}, 'demo.{ext}', {len(data)}, {len(data)}, '{key}')", db=r.db)
    return rid


def _document(rid, content, summary="A summary."):
    q = content.replace("'", "''")
    psql("INSERT INTO documents (recording_id, org_id, content, summary, model) VALUES"
         f" ('{rid}', '{ORG}', '{q}', '{summary}', 'local')", db=r.db)


def _sign(rid, exp):
    with open(os.path.join(r.tmp, "url-signing.key"), "rb") as f:
        key = f.read()
    mac = hmac.new(key, f"video\n{rid}\n{exp}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _sha(b):
    return hashlib.sha256(b).hexdigest()


DATA = os.urandom(3 * 1024 * 1024 + 12345)
VID = _recording(DATA)
N = len(DATA)


def _video(rid=VID, **kw):
    return r.get(f"/api/recordings/{rid}/video", **kw)


# ---- the video endpoint ------------------------------------------------------

def full_get_is_byte_identical_with_type_and_length():
    st, _, h, body = _video(token=OWNER)
    eq(st, 200)
    eq(_sha(body), _sha(DATA), "sha256")
    eq(h["content-type"], "video/mp4")
    eq(h["content-length"], str(N))
    eq(h["accept-ranges"], "bytes")
    eq(h["x-content-type-options"], "nosniff")


def any_member_of_the_org_may_watch():
    eq(_video(token=MEMBER)[0], 200)
    eq(_video(token=ADMIN)[0], 200)


def range_middle_suffix_and_open_ended_are_206_with_exact_bytes():
    cases = [("bytes=100-199", 100, 199), ("bytes=-500", N - 500, N - 1),
             (f"bytes={N - 1000}-", N - 1000, N - 1), ("bytes=0-0", 0, 0),
             (f"bytes=5-{N + 1000}", 5, N - 1),  # end past the file is clamped
             (f"bytes=-{N + 10}", 0, N - 1)]
    for rng, a, b in cases:
        st, _, h, body = _video(token=OWNER, headers={"Range": rng})
        eq(st, 206, rng)
        eq(h["content-range"], f"bytes {a}-{b}/{N}", rng)
        eq(h["content-length"], str(b - a + 1), rng)
        eq(body, DATA[a:b + 1], rng)


def unsatisfiable_range_is_416_with_size():
    for rng in [f"bytes={N}-", f"bytes={N + 5}-{N + 10}", "bytes=-0"]:
        st, js, h, _ = _video(token=OWNER, headers={"Range": rng})
        assert_error(st, js, 416, "invalid_request")
        eq(h["content-range"], f"bytes */{N}", rng)


def several_ranges_or_malformed_range_serve_the_whole_file():
    for rng in ["bytes=0-10,20-30", "bytes=abc", "items=0-5", "bytes=9-3"]:
        st, _, h, body = _video(token=OWNER, headers={"Range": rng})
        eq(st, 200, rng)
        eq(len(body), N, rng)
        if "content-range" in h:
            raise AssertionError(f"{rng}: Content-Range on a 200")


def if_range_with_another_validator_gets_the_whole_file():
    etag = _video(token=OWNER, headers={"Range": "bytes=0-0"})[2]["etag"]
    st, _, _, body = _video(token=OWNER, headers={"Range": "bytes=0-9", "If-Range": etag})
    eq(st, 206)
    eq(body, DATA[:10])
    st, _, _, body = _video(token=OWNER, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    eq(st, 200)
    eq(len(body), N)


def head_gives_headers_without_body():
    for hdrs, want, length in [({}, 200, N), ({"Range": "bytes=10-19"}, 206, 10)]:
        c = http.client.HTTPConnection("127.0.0.1", r.port, timeout=15)
        c.request("HEAD", f"/api/recordings/{VID}/video",
                  headers=dict(hdrs, Authorization=f"Bearer {OWNER}"))
        resp = c.getresponse()
        body = resp.read()
        eq(resp.status, want)
        eq(resp.getheader("Content-Length"), str(length))
        eq(resp.getheader("Accept-Ranges"), "bytes")
        eq(body, b"")
        # the connection stays usable after a HEAD
        c.request("GET", "/healthz")
        eq(c.getresponse().status, 200)
        c.close()


def video_of_another_org_is_404_and_no_token_401():
    st, js, _, _ = _video(token=OUTSIDER)
    assert_error(st, js, 404, "not_found")
    st, js, _, _ = _video()
    assert_error(st, js, 401, "unauthenticated")
    for bad in ["not-a-uuid", "0", str(uuid.uuid4())]:
        st, js, _, _ = _video(rid=bad, token=OWNER)
        assert_error(st, js, 404, "not_found")


def video_of_an_unfinished_upload_is_404():
    rid = _recording(b"partial", status="uploading")
    st, js, _, _ = _video(rid=rid, token=OWNER)
    assert_error(st, js, 404, "not_found")
    if "no video yet" not in js["error"]["message"]:
        raise AssertionError(js)


def content_type_falls_back_to_the_extension_and_refuses_html():
    rid = _recording(b"webm bytes", ext="webm", content_type=None)
    eq(_video(rid=rid, token=OWNER)[2]["content-type"], "video/webm")
    # an uploader's claim of text/html never reaches the browser
    rid = _recording(b"<script>alert(1)</script>", ext="mp4", content_type="text/html")
    eq(_video(rid=rid, token=OWNER)[2]["content-type"], "video/mp4")
    rid = _recording(b"??", ext="xyz", content_type="text/html")
    eq(_video(rid=rid, token=OWNER)[2]["content-type"], "application/octet-stream")
    rid = _recording(b"mp4", content_type="video/mp4; codecs=avc1")
    eq(_video(rid=rid, token=OWNER)[2]["content-type"], "video/mp4; codecs=avc1")
    for bad in ["video/", "video/mp4\u0001", "audio"]:
        rid = _recording(b"mov", ext="mov", content_type=bad)
        eq(_video(rid=rid, token=OWNER)[2]["content-type"], "video/quicktime", bad)


def signed_url_works_without_bearer():
    exp = int(time.time()) + 600
    path = f"/api/recordings/{VID}/video?exp={exp}&sig={_sign(VID, exp)}"
    st, _, _, body = r.get(path)
    eq(st, 200)
    eq(_sha(body), _sha(DATA))
    st, _, _, body = r.get(path, headers={"Range": "bytes=1000-1999"})
    eq(st, 206)
    eq(body, DATA[1000:2000])


def tampered_expired_or_foreign_signature_is_403():
    exp = int(time.time()) + 600
    sig = _sign(VID, exp)
    other = _recording(b"other video")
    past = int(time.time()) - 5
    bad = [f"exp={exp}&sig={sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}",
           f"exp={exp + 1}&sig={sig}",
           f"exp={past}&sig={_sign(VID, past)}",
           f"exp={exp}",
           f"sig={sig}",
           f"exp=abc&sig={sig}"]
    for q in bad:
        st, js, _, _ = r.get(f"/api/recordings/{VID}/video?{q}")
        assert_error(st, js, 403, "forbidden")
    st, js, _, _ = r.get(f"/api/recordings/{other}/video?exp={exp}&sig={sig}")
    assert_error(st, js, 403, "forbidden")
    # a valid token does not rescue a bad signature: the signature decides
    st, js, _, _ = r.get(f"/api/recordings/{VID}/video?exp={past}&sig={_sign(VID, past)}",
                         token=OWNER)
    assert_error(st, js, 403, "forbidden")


def _rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def twenty_mb_streams_in_bounded_memory():
    big = os.urandom(20 * 1024 * 1024)
    rid = _recording(big)
    # A second process on the same data dir and database, so that under
    # ASan (make asan) freed buffers are reused at once instead of sitting
    # in the quarantine, which would count every byte ever sent as RSS.
    asan = (os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0").lstrip(":")
    r2 = Reeld(env={"REELD_DATA_DIR": r.tmp, "ASAN_OPTIONS": asan}, db=r.db).start()
    try:
        _stream_bounded(r2, rid, big)
    finally:
        r2.stop()
        os.remove(os.path.join(r.tmp, "storage", f"org-{ORG}/recordings/{rid}.mp4"))


def _stream_bounded(srv, rid, big):
    pid = srv.proc.pid
    srv.get(f"/api/recordings/{VID}/video", token=OWNER, headers={"Range": "bytes=0-0"})
    before = _rss_kb(pid)
    hwm_before = _rss_kb(pid, "VmHWM")
    # A slow reader: a small receive buffer and a pause after the first
    # megabyte. A server that queued the whole file would hold it now.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(30)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(f"GET /api/recordings/{rid}/video HTTP/1.1\r\nHost: x\r\n"
              f"Authorization: Bearer {OWNER}\r\nConnection: close\r\n\r\n".encode())
    got = b""
    while len(got) < 1024 * 1024:
        b = s.recv(65536)
        if not b:
            break
        got += b
    time.sleep(1.0)
    during = _rss_kb(pid)
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        got += b
    s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(head[:200])
    eq(_sha(body), _sha(big), "sha256 of the 20 MB body")
    after = _rss_kb(pid)
    print(f"rss before {before} kB, during {during} kB, after {after} kB", file=sys.stderr)
    growth = max(during, after) - before
    if growth > 16 * 1024:
        raise AssertionError(f"RSS grew by {growth} kB while streaming 20 MB")
    hwm_growth = _rss_kb(pid, "VmHWM") - hwm_before
    if hwm_growth > 16 * 1024:
        raise AssertionError(f"peak RSS grew by {hwm_growth} kB while streaming 20 MB")


def client_abort_mid_stream_leaves_server_healthy():
    s = socket.create_connection(("127.0.0.1", r.port), timeout=10)
    s.sendall(f"GET /api/recordings/{VID}/video HTTP/1.1\r\nHost: x\r\n"
              f"Authorization: Bearer {OWNER}\r\n\r\n".encode())
    s.recv(65536)
    s.close()
    eq(_video(token=OWNER, headers={"Range": "bytes=0-9"})[3], DATA[:10])


# ---- publication ----------------------------------------------------------------

MARKDOWN = """# Quarterly walkthrough

Intro with **bold** and ~~old~~ text, see https://example.com/docs.

<script>alert('xss')</script>

<div onclick="steal()">raw block</div>

Inline <img src=x onerror=alert(1)> html and a [bad link](javascript:alert(1)).

| step | owner |
|------|-------|
| one  | ana   |
"""


def _publish(rid, body, token=OWNER):
    return r.post(f"/api/recordings/{rid}/publish", body, token=token)


def _share_path(url):
    if not url.startswith(PUBLIC + "/share/"):
        raise AssertionError(f"share_url {url!r} not under {PUBLIC}/share/")
    return urllib.parse.urlsplit(url).path


def publish_flow_html_json_and_unpublish():
    rid = _recording(b"v", title="Q3 <b>plan</b> & more", description="Team \"sync\"")
    _document(rid, MARKDOWN)
    st, js, _, _ = _publish(rid, {"publish": True})
    eq(st, 200)
    eq(js["published"], True)
    path = _share_path(js["share_url"])
    sid = path.rsplit("/", 1)[1]
    if len(sid) < 22:
        raise AssertionError(f"share id {sid!r} too short to be unguessable")

    st, _, h, body = r.get(path)
    eq(st, 200)
    if not h["content-type"].startswith("text/html"):
        raise AssertionError(h["content-type"])
    eq(h["cache-control"], "no-store")
    eq(h["x-content-type-options"], "nosniff")
    csp = h["content-security-policy"]
    for part in ["default-src 'none'", "media-src 'self'", "style-src 'unsafe-inline'"]:
        if part not in csp:
            raise AssertionError(f"CSP lacks {part}: {csp}")
    page = body.decode()
    if not page.lstrip().lower().startswith("<!doctype html>") or "</html>" not in page:
        raise AssertionError("not a complete HTML page")
    for want in ["<title>Q3 &lt;b&gt;plan&lt;/b&gt; &amp; more</title>",
                 "Team &quot;sync&quot;", "<h1>Quarterly walkthrough</h1>",
                 "<strong>bold</strong>", "<del>old</del>", "<table>",
                 '<a href="https://example.com/docs">']:
        if want not in page:
            raise AssertionError(f"page lacks {want!r}")
    for bad in ["<script", "onclick", "onerror", "javascript:", "<b>plan", "<video"]:
        if bad in page:
            raise AssertionError(f"page contains {bad!r}")

    st, js, h, _ = r.get(path, headers={"Accept": "application/json"})
    eq(st, 200)
    eq(h["cache-control"], "no-store")
    eq(js["title"], "Q3 <b>plan</b> & more")
    eq(js["description"], 'Team "sync"')
    eq(js["document"]["content"], MARKDOWN)
    eq(js["document"]["summary"], "A summary.")
    for k in ["updated_at"]:
        if not js["document"][k]:
            raise AssertionError(k)
    eq(js["video_url"], None)
    if not js["created_at"].endswith("Z"):
        raise AssertionError(js["created_at"])

    # publishing again while published keeps the link
    st, js2, _, _ = _publish(rid, {"publish": True})
    eq(js2["share_url"], PUBLIC + path)

    # unpublish: the link is dead at once
    st, js, _, _ = _publish(rid, {"publish": False})
    eq(st, 200)
    eq(js, {"published": False, "share_url": None})
    for accept in [None, "application/json"]:
        st, js, h, _ = r.get(path, headers={"Accept": accept} if accept else None)
        assert_error(st, js, 404, "not_found")
        eq(h["cache-control"], "no-store")

    # a new publication gets a new link; the old one stays dead
    st, js, _, _ = _publish(rid, {"publish": True})
    new_path = _share_path(js["share_url"])
    if new_path == path:
        raise AssertionError("republish after unpublish reused the old share id")
    eq(r.get(new_path)[0], 200)
    eq(r.get(path)[0], 404)


def include_video_gives_a_working_signed_url():
    data = os.urandom(300 * 1024)
    rid = _recording(data, title="With video")
    _document(rid, "Short doc.")
    st, js, _, _ = _publish(rid, {"publish": True, "includeVideo": True})
    eq(st, 200)
    path = _share_path(js["share_url"])
    js = r.get(path, headers={"Accept": "application/json"})[1]
    url = js["video_url"]
    if not url or not url.startswith(f"{PUBLIC}/api/recordings/{rid}/video?"):
        raise AssertionError(f"video_url {url!r}")
    u = urllib.parse.urlsplit(url)
    st, _, _, body = r.get(f"{u.path}?{u.query}")  # no Bearer
    eq(st, 200)
    eq(_sha(body), _sha(data))
    page = r.get(path)[3].decode()
    src = url.replace("&", "&amp;")
    if f'<video controls preload="metadata" src="{src}">' not in page:
        raise AssertionError("page lacks the <video> with the signed URL")
    # includeVideo false takes it away again
    _publish(rid, {"publish": True, "includeVideo": False})
    eq(r.get(path, headers={"Accept": "application/json"})[1]["video_url"], None)


def share_without_document_says_not_ready():
    rid = _recording(b"v", title="Fresh")
    js = _publish(rid, {"publish": True})[1]
    path = _share_path(js["share_url"])
    st, _, _, body = r.get(path)
    eq(st, 200)
    if "not ready" not in body.decode():
        raise AssertionError("page does not say the document is not ready")
    st, js, _, _ = r.get(path, headers={"Accept": "application/json"})
    eq(st, 200)
    eq(js["document"], None)


def unknown_or_malformed_share_ids_are_404():
    for sid in ["AAAAAAAAAAAAAAAAAAAAAAAA", "short", "bad%20id%21%21%21%21", "x" * 80]:
        st, js, h, _ = r.get(f"/share/{sid}")
        assert_error(st, js, 404, "not_found")
        eq(h["cache-control"], "no-store")


def only_owner_or_admin_may_publish():
    rid = _recording(b"v", title="Guarded")
    st, js, _, _ = _publish(rid, {"publish": True}, token=MEMBER)
    assert_error(st, js, 403, "forbidden")
    eq(psql(f"SELECT published FROM recordings WHERE id = '{rid}'", db=r.db), "f")
    st, js, _, _ = _publish(rid, {"publish": True}, token=OUTSIDER)
    assert_error(st, js, 404, "not_found")
    st, js, _, _ = _publish(rid, {"publish": True}, token=None)
    assert_error(st, js, 401, "unauthenticated")
    st, js, _, _ = _publish(rid, {"publish": True}, token=ADMIN)
    eq(st, 200)
    eq(js["published"], True)
    st, js, _, _ = _publish(rid, {"publish": False}, token=OWNER)
    eq(st, 200)
    st, js, _, _ = _publish(str(uuid.uuid4()), {"publish": True})
    assert_error(st, js, 404, "not_found")
    st, js, _, _ = _publish("nope", {"publish": True})
    assert_error(st, js, 404, "not_found")


def publish_validates_its_body():
    rid = _recording(b"v", title="Validated")
    for body in [{}, {"publish": "yes"}, {"publish": 1}, {"publish": None},
                 {"publish": True, "includeVideo": "true"}]:
        st, js, _, _ = _publish(rid, body)
        assert_error(st, js, 422, "invalid_request")
    st, js, _, _ = _publish(rid, [True])
    assert_error(st, js, 400, "invalid_request")
    eq(psql(f"SELECT published FROM recordings WHERE id = '{rid}'", db=r.db), "f")


if __name__ == "__main__":
    try:
        run_all(globals())
    finally:
        r.stop()
    done()
