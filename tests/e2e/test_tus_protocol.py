"""The tus 1.0.0 server at /api/uploads/ at the protocol level (SPEC 7,
issue 3 item 3), with raw http.client requests and sockets: OPTIONS,
creation (with upload, with deferred length), HEAD, PATCH in chunks with
the bytes on disk compared, the protocol's status codes (409, 412, 413,
415, 423, 460), checksums, termination, X-HTTP-Method-Override,
metadata limits, a PATCH cut off midway and resumed, and expiration with
the sweeper (REELD_UPLOAD_SWEEP_S=1 here). tus-js-client runs against
the same server in test_tus_client.py."""
import base64
import datetime
import email.utils
import hashlib
import json
import os
import socket
import threading
import time
import urllib.parse

from harness import Reeld, assert_error, done, eq, psql, run_all

# No pipeline stage runs here: a finished upload stays 'uploaded'.
r = Reeld(env={"REELD_UPLOAD_SWEEP_S": "1", "REELD_WORKERS": "off"})
PUBLIC = f"http://127.0.0.1:{r.port}"
r.env["REELD_PUBLIC_URL"] = PUBLIC
r.start()
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
MAX = 10 * 1024 ** 3


def _org(tag):
    admin = r.token(f"{tag}-admin")
    st, js, _, raw = r.post("/api/organizations", {"name": f"Org {tag}"}, token=admin)
    eq(st, 201, f"create org {raw[:200]!r}")
    oid = js["organization"]["id"]
    owner = r.token(f"{tag}-owner", org=oid, role="member")
    other = r.token(f"{tag}-other", org=oid, role="member")
    for t in (owner, other):
        eq(r.get("/api/organizations/current", token=t)[0], 200)
    return oid, owner, other


ORG, OWNER, OTHER = _org("tus")


def _meta(**kv):
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in kv.items())


def _create(length=None, meta=None, body=None, headers=None, token=OWNER):
    """POST /api/uploads/ → (status, path of Location, headers, raw)."""
    h = dict(TUS)
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    if meta is not None:
        h["Upload-Metadata"] = meta
    if body is not None:
        h["Content-Type"] = OCTETS
    h.update(headers or {})
    st, _, hd, raw = r.request("POST", "/api/uploads/", body=body, token=token, headers=h)
    loc = hd.get("location")
    return st, (urllib.parse.urlsplit(loc).path if loc else None), hd, raw


def _new(length=None, **kw):
    st, path, hd, raw = _create(length, **kw)
    eq(st, 201, f"creation {raw[:200]!r}")
    return path


def _head(path, token=OWNER, headers=None):
    st, _, hd, _ = r.request("HEAD", path, token=token, headers=dict(TUS, **(headers or {})))
    return st, (int(hd["upload-offset"]) if "upload-offset" in hd else None), hd


def _patch(path, offset, data, headers=None, token=OWNER):
    h = dict(TUS, **{"Upload-Offset": str(offset), "Content-Type": OCTETS})
    h.update(headers or {})
    st, js, hd, raw = r.request("PATCH", path, body=data, token=token, headers=h, timeout=60)
    return st, (int(hd["upload-offset"]) if "upload-offset" in hd else None), hd, js


def _rid(path):
    return path.rsplit("/", 1)[1]


def _part(path):
    return os.path.join(r.tmp, "uploads", f"{_rid(path)}.part")


def _stored(path):
    key = psql(f"SELECT storage_key FROM recordings WHERE id = '{_rid(path)}'", db=r.db)
    return os.path.join(r.tmp, "storage", key)


def _status(path):
    return psql(f"SELECT status FROM recordings WHERE id = '{_rid(path)}'", db=r.db)


def _checksum(alg, data):
    return f"{alg} {base64.b64encode(hashlib.new(alg, data).digest()).decode()}"


def _raw_patch_head(path, offset, length, token=OWNER):
    return (f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\nContent-Type: {OCTETS}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _wait(cond, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def options_advertises_the_server():
    for p in ("/api/uploads/", "/api/uploads"):
        st, _, h, raw = r.request("OPTIONS", p, token=OWNER)
        eq(st, 204, p)
        eq(raw, b"")
        eq(h.get("tus-resumable"), "1.0.0")
        eq(h.get("tus-version"), "1.0.0")
        eq(set(h.get("tus-extension", "").split(",")),
           {"creation", "creation-with-upload", "creation-defer-length", "termination",
            "expiration", "checksum"})
        eq(h.get("tus-max-size"), str(MAX))
        eq(h.get("tus-checksum-algorithm"), "sha1,sha256")
    st, _, h, _ = r.request("OPTIONS", "/api/uploads/")
    eq(st, 401, "OPTIONS is authenticated like every /api route")
    eq(h.get("tus-resumable"), "1.0.0")


def creation_returns_an_absolute_location_and_the_recording():
    meta = _meta(filename="walkthrough.webm", filetype="video/webm", title="Onboarding")
    st, path, h, raw = _create(1000, meta=meta)
    eq(st, 201, raw[:200])
    eq(h.get("tus-resumable"), "1.0.0")
    loc = h["location"]
    if not loc.startswith(f"{PUBLIC}/api/uploads/") or len(_rid(path)) != 36:
        raise AssertionError(f"Location {loc!r}")
    exp = email.utils.parsedate_to_datetime(h["upload-expires"])
    left = exp - datetime.datetime.now(datetime.timezone.utc)
    if not datetime.timedelta(hours=23) < left <= datetime.timedelta(hours=24, minutes=1):
        raise AssertionError(f"Upload-Expires {h['upload-expires']!r}")
    st, js, _, _ = r.get(f"/api/recordings/{_rid(path)}", token=OWNER)
    eq(st, 200)
    rec = js["recording"]
    eq((rec["title"], rec["content_type"], rec["size_bytes"], rec["status"]),
       ("Onboarding", "video/webm", 1000, "uploading"))
    eq(psql(f"SELECT filename || ' ' || storage_key FROM recordings WHERE id = '{rec['id']}'",
            db=r.db), f"walkthrough.webm org-{ORG}/recordings/{rec['id']}.webm")
    # without a title, the filename without its extension
    path = _new(10, meta=_meta(filename="Team sync.mov"))
    eq(r.get(f"/api/recordings/{_rid(path)}", token=OWNER)[1]["recording"]["title"],
       "Team sync")


def creation_validates_its_headers():
    cases = [({}, 400), ({"Upload-Length": "10", "Upload-Defer-Length": "1"}, 400),
             ({"Upload-Defer-Length": "2"}, 400), ({"Upload-Length": "-1"}, 400),
             ({"Upload-Length": "1e3"}, 400), ({"Upload-Length": str(MAX + 1)}, 413),
             ({"Upload-Length": "99999999999999999999999"}, 413)]
    for hdrs, want in cases:
        h = dict(TUS, **hdrs)
        st, js, hd, _ = r.request("POST", "/api/uploads/", token=OWNER, headers=h)
        eq(st, want, f"{hdrs}")
        eq(hd.get("tus-resumable"), "1.0.0")
    st, _, _, _ = _create(10, meta=_meta(filetype="application/pdf"))
    eq(st, 400, "a filetype that is not audio or video")
    eq(_create(MAX)[0], 201, "Tus-Max-Size itself is accepted")


def metadata_is_decoded_strictly_and_bounded():
    big = _meta(filename="a.mp4", note="x" * 3100)
    if len(big) <= 4096:
        raise AssertionError("test metadata too small")
    st, _, _, raw = _create(10, meta=big)
    eq(st, 400, f"oversized metadata {raw[:200]!r}")
    # Zm9= is a non-canonical "fo" (Zm8=): lenient decoders take it, strict ones do not
    for bad in ["filename !!!", "filename Zm9v,filename YmFy", "filename Zm9", "filename Zm9v=",
                "filename Zm9=", "filename Zm9v,", ",filename Zm9v", "filename Zm 9v",
                "filename //79"]:
        st, _, _, _ = _create(10, meta=bad)
        eq(st, 400, f"metadata {bad!r}")
    # a key without a value, and values round-trip through HEAD
    path = _new(10, meta="filename bXkubXA0,is_confidential,title w6lsw6h2ZQ==")
    st, _, h = _head(path)
    got = dict((p.split(" ") + [""])[:2] for p in h["upload-metadata"].split(","))
    eq(got, {"filename": "bXkubXA0", "is_confidential": "", "title": "w6lsw6h2ZQ=="})
    eq(r.get(f"/api/recordings/{_rid(path)}", token=OWNER)[1]["recording"]["title"], "élève")


def head_reports_the_upload():
    path = _new(100, meta=_meta(filename="h.mp4", filetype="video/mp4"))
    st, off, h = _head(path)
    eq((st, off), (200, 0))
    eq(h.get("upload-length"), "100")
    eq(h.get("cache-control"), "no-store")
    eq(h.get("tus-resumable"), "1.0.0")
    if "upload-defer-length" in h:
        raise AssertionError("Upload-Defer-Length with a known length")
    email.utils.parsedate_to_datetime(h["upload-expires"])
    eq(set(h["upload-metadata"].split(",")),
       {f"filename {base64.b64encode(b'h.mp4').decode()}",
        f"filetype {base64.b64encode(b'video/mp4').decode()}"})
    st, off, h = _head("/api/uploads/00000000-0000-4000-8000-000000000000")
    eq((st, h.get("cache-control"), h.get("tus-resumable")), (404, "no-store", "1.0.0"))
    eq(_head("/api/uploads/not-a-uuid")[0], 404)


def patch_in_chunks_stores_the_exact_bytes():
    data = os.urandom(300_000)
    path = _new(len(data), meta=_meta(filename="c.mp4", filetype="video/mp4"))
    off = 0
    for size in (100_000, 150_000, 50_000):
        st, new_off, h, js = _patch(path, off, data[off:off + size])
        eq(st, 204, f"PATCH at {off}: {js}")
        eq(new_off, off + size)
        eq(h.get("tus-resumable"), "1.0.0")
        off = new_off
        if off < len(data):
            eq(os.path.getsize(_part(path)), off, "in-progress bytes on disk")
            email.utils.parsedate_to_datetime(h["upload-expires"])
            eq(_status(path), "uploading")
    with open(_stored(path), "rb") as f:
        eq(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(data).hexdigest(),
           "stored file equals the upload")
    eq(os.path.exists(_part(path)), False, "in-progress file moved into place")
    eq(_status(path), "uploaded")
    eq(psql(f"SELECT data->>'status' FROM events WHERE recording_id = '{_rid(path)}' "
            "AND type = 'recording.status'", db=r.db), "uploaded")
    st, off, h = _head(path)
    eq((st, off, h.get("upload-length")), (200, len(data), str(len(data))))
    if "upload-expires" in h:
        raise AssertionError("a finished upload does not expire")
    # nothing more can be written
    st, _, _, js = _patch(path, len(data), b"x")
    assert_error(st, js, 413, "payload_too_large")


def wrong_offset_is_409_and_changes_nothing():
    path = _new(100)
    st, off, _, js = _patch(path, 5, b"abc")
    assert_error(st, js, 409, "conflict")
    eq(_head(path)[1], 0)
    eq(_patch(path, 0, b"0123456789")[:2], (204, 10))
    for bad in (0, 9, 11):
        st, off, _, js = _patch(path, bad, b"zz")
        assert_error(st, js, 409, "conflict")
    eq(_head(path)[1], 10)
    with open(_part(path), "rb") as f:
        eq(f.read(), b"0123456789")
    st, _, _, js = _patch(path, 10, b"x", headers={"Upload-Offset": "-1"})
    assert_error(st, js, 400, "invalid_request")


def wrong_content_type_is_415():
    path = _new(10)
    for ct in ("application/octet-stream", "application/json", None):
        h = dict(TUS, **{"Upload-Offset": "0"})
        if ct:
            h["Content-Type"] = ct
        st, js, hd, _ = r.request("PATCH", path, body=b"abc", token=OWNER, headers=h)
        assert_error(st, js, 415, "unsupported_media_type")
        eq(hd.get("tus-resumable"), "1.0.0")
    eq(_head(path)[1], 0)


def another_tus_version_is_412():
    path = _new(10)
    for v in ("0.2.2", "2.0.0", None):
        h = {"Tus-Resumable": v} if v else {}
        for m, body, extra in [("HEAD", None, {}), ("DELETE", None, {}),
                               ("PATCH", b"ab", {"Upload-Offset": "0", "Content-Type": OCTETS}),
                               ("POST", None, {"Upload-Length": "5"})]:
            p = "/api/uploads/" if m == "POST" else path
            st, _, hd, _ = r.request(m, p, body=body, token=OWNER, headers=dict(h, **extra))
            eq(st, 412, f"{m} with Tus-Resumable {v}")
            eq(hd.get("tus-version"), "1.0.0")
            eq(hd.get("tus-resumable"), "1.0.0")
    eq(_head(path)[:2], (200, 0), "nothing changed")


def checksums_are_verified():
    path = _new(30)
    a, b, c = b"a" * 10, b"b" * 10, b"c" * 10
    eq(_patch(path, 0, a, {"Upload-Checksum": _checksum("sha1", a)})[:2], (204, 10))
    eq(_patch(path, 10, b, {"Upload-Checksum": _checksum("sha256", b)})[:2], (204, 20))
    for wrong in (_checksum("sha1", b"other"), _checksum("sha256", b"other")):
        st, off, _, js = _patch(path, 20, c, {"Upload-Checksum": wrong})
        eq(st, 460, f"mismatch: {js}")
        eq(off, 20)
        eq(_head(path)[1], 20, "offset unchanged")
        eq(os.path.getsize(_part(path)), 20, "the chunk was discarded")
    for bad in ("md5 " + base64.b64encode(hashlib.md5(c).digest()).decode(), "sha1",
                "sha1 !!!!", "sha256 " + base64.b64encode(b"short").decode()):
        st, _, _, js = _patch(path, 20, c, {"Upload-Checksum": bad})
        assert_error(st, js, 400, "invalid_request")
    eq(_patch(path, 20, c, {"Upload-Checksum": _checksum("sha256", c)})[:2], (204, 30))
    with open(_stored(path), "rb") as f:
        eq(f.read(), a + b + c)


def creation_with_upload():
    data = os.urandom(1000)
    st, path, h, raw = _create(1000, body=data[:400], meta=_meta(filename="w.mp4"))
    eq(st, 201, raw[:200])
    eq(h.get("upload-offset"), "400")
    eq(_head(path)[1], 400)
    eq(_patch(path, 400, data[400:])[:2], (204, 1000))
    with open(_stored(path), "rb") as f:
        eq(f.read(), data)
    # the whole file in the creation request completes the upload
    st, path, h, _ = _create(len(data), body=data,
                             headers={"Upload-Checksum": _checksum("sha1", data)})
    eq((st, h.get("upload-offset")), (201, "1000"))
    eq(_status(path), "uploaded")
    # a creation whose body fails its checksum exists, with nothing stored
    st, path, h, _ = _create(10, body=b"0123456789",
                             headers={"Upload-Checksum": _checksum("sha1", b"nope")})
    eq(st, 460)
    eq(_head(path)[1], 0)
    # a body of another type is refused
    st, _, _, _ = _create(10, body=b"x", headers={"Content-Type": "text/plain"})
    eq(st, 415)


def zero_length_upload_completes_at_creation():
    st, path, h, _ = _create(0, meta=_meta(filename="empty.mp4"))
    eq(st, 201)
    eq(_status(path), "uploaded")
    eq(os.path.getsize(_stored(path)), 0)


def deferred_length_is_set_once():
    path = _new(None)
    st, off, h = _head(path)
    eq((st, off, h.get("upload-defer-length")), (200, 0, "1"))
    if "upload-length" in h:
        raise AssertionError("Upload-Length while deferred")
    eq(_patch(path, 0, b"a" * 100)[:2], (204, 100))
    st, _, _, js = _patch(path, 100, b"b", {"Upload-Length": "50"})
    assert_error(st, js, 400, "invalid_request")
    st, _, _, js = _patch(path, 100, b"b", {"Upload-Length": str(MAX + 1)})
    assert_error(st, js, 413, "payload_too_large")
    eq(_patch(path, 100, b"b" * 20, {"Upload-Length": "150"})[:2], (204, 120))
    st, off, h = _head(path)
    eq((off, h.get("upload-length")), (120, "150"))
    if "upload-defer-length" in h:
        raise AssertionError("still deferred")
    st, _, _, js = _patch(path, 120, b"c", {"Upload-Length": "160"})
    assert_error(st, js, 400, "invalid_request")
    eq(_patch(path, 120, b"c" * 30)[:2], (204, 150))
    eq(_status(path), "uploaded")


def bytes_beyond_the_length_are_413():
    path = _new(10)
    st, _, _, js = _patch(path, 0, b"x" * 11)
    assert_error(st, js, 413, "payload_too_large")
    eq(_head(path)[1], 0)
    # chunked: the excess is found while streaming; nothing of it is kept
    s = socket.create_connection(("127.0.0.1", r.port), timeout=10)
    head = (f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OWNER}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: {OCTETS}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    s.sendall(head + b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
    out = s.recv(65536)
    s.close()
    if not out.startswith(b"HTTP/1.1 413"):
        raise AssertionError(out[:200])
    eq(_head(path)[1], 0)
    eq(_patch(path, 0, b"x" * 10)[:2], (204, 10))


def termination_removes_bytes_and_recording():
    path = _new(100)
    eq(_patch(path, 0, b"a" * 30)[:2], (204, 30))
    eq(os.path.exists(_part(path)), True)
    st, js, _, _ = r.request("DELETE", path, token=OTHER, headers=TUS)
    assert_error(st, js, 403, "forbidden")
    st, _, h, raw = r.request("DELETE", path, token=OWNER, headers=TUS)
    eq((st, raw, h.get("tus-resumable")), (204, b"", "1.0.0"))
    eq(os.path.exists(_part(path)), False, "bytes removed")
    eq(_head(path)[0], 404)
    eq(r.get(f"/api/recordings/{_rid(path)}", token=OWNER)[0], 404)
    eq(r.request("DELETE", path, token=OWNER, headers=TUS)[0], 404)


def method_override_acts_as_the_named_method():
    path = _new(20)
    h = dict(TUS, **{"X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0",
                     "Content-Type": OCTETS})
    st, _, hd, _ = r.request("POST", path, body=b"a" * 8, token=OWNER, headers=h)
    eq((st, hd.get("upload-offset")), (204, "8"))
    st, _, hd, _ = r.request("POST", path, token=OWNER,
                             headers=dict(TUS, **{"X-HTTP-Method-Override": "HEAD"}))
    eq((st, hd.get("upload-offset"), hd.get("upload-length")), (200, "8", "20"))
    st, _, _, _ = r.request("POST", path, token=OWNER, headers=dict(TUS))
    eq(st, 405, "POST on an upload without an override")
    st, _, _, _ = r.request("POST", path, token=OWNER,
                            headers=dict(TUS, **{"X-HTTP-Method-Override": "DELETE"}))
    eq(st, 204)
    eq(_head(path)[0], 404)


def a_cut_off_patch_keeps_what_arrived_and_resumes():
    data = os.urandom(200_000)
    path = _new(len(data))
    s = socket.create_connection(("127.0.0.1", r.port), timeout=10)
    s.sendall(_raw_patch_head(path, 0, len(data)) + data[:120_000])
    time.sleep(0.3)
    s.close()  # the client goes away mid-body
    # at once, as a client resuming does: the HEAD waits for the dropped
    # request to record what it received, so its offset is the one to use
    off = _head(path)[1]
    if not 0 < off <= 120_000:
        raise AssertionError(f"offset {off}")
    with open(_part(path), "rb") as f:
        eq(f.read(), data[:off], "durable bytes are the prefix sent")
    eq(psql(f"SELECT upload_lease_owner IS NULL FROM recordings WHERE id = '{_rid(path)}'",
            db=r.db), "t", "lease released")
    eq(_patch(path, off, data[off:])[:2], (204, len(data)))
    with open(_stored(path), "rb") as f:
        eq(f.read(), data)


def concurrent_patch_is_423():
    data = os.urandom(100_000)
    path = _new(len(data))
    rid = _rid(path)
    s = socket.create_connection(("127.0.0.1", r.port), timeout=20)
    s.sendall(_raw_patch_head(path, 0, len(data)) + data[:1000])
    result = {}

    def finish_slowly():
        time.sleep(0.5)
        s.sendall(data[1000:])
        result["reply"] = s.recv(65536)
        s.close()

    _wait(lambda: psql(f"SELECT upload_lease_owner IS NOT NULL FROM recordings "
                       f"WHERE id = '{rid}'", db=r.db) == "t", "the first PATCH's lease")
    t = threading.Thread(target=finish_slowly)
    t.start()
    st, _, _, js = _patch(path, 0, b"second")
    assert_error(st, js, 423, "conflict")
    t.join(30)
    if not result.get("reply", b"").startswith(b"HTTP/1.1 204"):
        raise AssertionError(f"first PATCH: {result.get('reply', b'')[:200]!r}")
    eq(_head(path)[1], len(data))
    with open(_stored(path), "rb") as f:
        eq(f.read(), data)


def a_lease_of_a_dead_process_is_taken_over():
    """Another process's PATCH holds the lease (423); once its lease
    expires (the process died), a PATCH goes through."""
    path = _new(10)
    rid = _rid(path)
    psql(f"UPDATE recordings SET upload_lease_owner = 'other-process', "
         f"upload_lease_expires_at = now() + interval '1 hour' WHERE id = '{rid}'", db=r.db)
    st, _, _, js = _patch(path, 0, b"abc")
    assert_error(st, js, 423, "conflict")
    psql(f"UPDATE recordings SET upload_lease_expires_at = now() - interval '1 second' "
         f"WHERE id = '{rid}'", db=r.db)
    eq(_patch(path, 0, b"abc")[:2], (204, 3))


def who_may_write():
    path = _new(10)
    st, _, _, js = _patch(path, 0, b"abc", token=OTHER)
    assert_error(st, js, 403, "forbidden")
    eq(_head(path, token=OTHER)[:2], (200, 0), "members may look")
    _, outsider, _ = _org("tus-out")
    for m in ("HEAD", "PATCH", "DELETE"):
        h = dict(TUS, **({"Upload-Offset": "0", "Content-Type": OCTETS} if m == "PATCH" else {}))
        st, _, hd, _ = r.request(m, path, body=b"x" if m == "PATCH" else None, token=outsider,
                                 headers=h)
        eq(st, 404, f"{m} by another organization")
    st, _, hd, _ = r.request("PATCH", path, body=b"x", headers=dict(
        TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS}))
    eq((st, hd.get("tus-resumable")), (401, "1.0.0"))


def expired_upload_is_410_then_swept():
    path = _new(100)
    rid = _rid(path)
    eq(_patch(path, 0, b"a" * 10)[:2], (204, 10))
    # held by a live lease, the sweeper leaves it: the expiry shows as 410
    psql(f"UPDATE recordings SET upload_expires_at = now() - interval '1 second', "
         f"upload_lease_owner = 'elsewhere', upload_lease_expires_at = now() + "
         f"interval '1 hour' WHERE id = '{rid}'", db=r.db)
    time.sleep(1.5)
    st, _, h = _head(path)
    eq(st, 410, "expired")
    eq(_patch(path, 10, b"b")[0], 410)
    # free, the sweeper (every second here) removes bytes and row
    psql(f"UPDATE recordings SET upload_lease_owner = NULL, upload_lease_expires_at = NULL "
         f"WHERE id = '{rid}'", db=r.db)
    _wait(lambda: _head(path)[0] == 404, "the sweep", timeout=15)
    eq(os.path.exists(_part(path)), False, "swept bytes")
    eq(psql(f"SELECT count(*) FROM recordings WHERE id = '{rid}'", db=r.db), "0")
    eq(psql(f"SELECT count(*) FROM events WHERE recording_id = '{rid}' "
            "AND type = 'recording.deleted'", db=r.db), "1")
    sweeps = [json.loads(ln) for ln in r.log().splitlines()
              if '"upload sweep"' in ln and '"removed"' in ln]
    if not any(x.get("removed", 0) >= 1 for x in sweeps):
        raise AssertionError("no 'upload sweep' log line with removed >= 1")


def each_patch_extends_the_expiry():
    path = _new(100)
    rid = _rid(path)
    psql(f"UPDATE recordings SET upload_expires_at = now() + interval '1 minute' "
         f"WHERE id = '{rid}'", db=r.db)
    st, _, h, _ = _patch(path, 0, b"a")
    eq(st, 204)
    left = email.utils.parsedate_to_datetime(h["upload-expires"]) - \
        datetime.datetime.now(datetime.timezone.utc)
    if left < datetime.timedelta(hours=23):
        raise AssertionError(f"Upload-Expires {h['upload-expires']}")


if __name__ == "__main__":
    run_all(globals())
    r.stop()
    done()
