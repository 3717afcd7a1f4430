#!/usr/bin/env python3
"""Resumable uploads end to end (SPEC 7, issue 3 "What it must show").

The upload flows are driven by the real tus-js-client from the npm
registry (tests/e2e/js, installed by tests/run with `npm ci`): a 50 MB
file in 5 MB chunks, an upload aborted midway and finished by a new client
instance from the upload URL, creation-with-upload, creation-defer-length
and X-HTTP-Method-Override. Each download goes through the signed
video_url without a Bearer token, whole and with single Ranges, and must
hash (sha256) to the file uploaded. The protocol cases the issue lists
(checksum mismatch, wrong offset, concurrent PATCHes, expiration,
termination, OPTIONS) are sent as raw HTTP."""
import hashlib
import os
import shutil
import socket
import tempfile
import time

from harness import Reeld, done, eq, psql, run_all
from tusutil import (OCTETS, TUS, Org, checksum, metadata, node, public_env,
                     random_file, recording_id_by_title, tus_create, tus_head, tus_patch,
                     upload_files, verify_download, wait_status)

MB = 1024 * 1024
r = Reeld(env={"REELD_UPLOAD_SWEEP_S": "1"})
public_env(r)
r.start()
org = Org(r, "tus")
files = tempfile.mkdtemp(prefix="reeld-tus-files-")
ENDPOINT = f"http://127.0.0.1:{r.port}/api/uploads/"


def _title(tag):
    return f"{tag} {os.urandom(4).hex()}"


def _js_upload(tag, size, chunk, **extra):
    """Uploads a random file with upload.mjs; returns (result, rid, path, sha)."""
    path, sha = random_file(files, f"{tag}.bin", size)
    title = _title(tag)
    opts = {"endpoint": ENDPOINT, "token": org.owner, "file": path, "chunkSize": chunk,
            "metadata": {"filename": f"{tag}.webm", "filetype": "video/webm", "title": title}}
    opts.update(extra)
    res = node("upload.mjs", opts)
    if not res.get("ok"):
        raise AssertionError(f"tus-js-client failed: {res}")
    return res, recording_id_by_title(r, title), path, sha


def _statuses(reqs, method):
    return [q["status"] for q in reqs if q["method"] == method and not q.get("override")]


def tus_js_client_uploads_50mb_in_5mb_chunks():
    size = 50 * MB
    res, rid, path, sha = _js_upload("fifty", size, 5 * MB)
    eq(_statuses(res["requests"], "POST"), [201], "creation")
    patches = [q for q in res["requests"] if q["method"] == "PATCH"]
    eq([q["status"] for q in patches], [204] * 10, "ten PATCHes of 5 MB")
    eq([int(q["offset"]) for q in patches], [(i + 1) * 5 * MB for i in range(10)],
       "Upload-Offset after each PATCH")
    for q in res["requests"]:
        eq(q["tus"], "1.0.0", f"Tus-Resumable on the {q['method']} response")
    js = wait_status(r, rid, org.owner)
    rec = js["recording"]
    eq(rec["size_bytes"], size, "size_bytes")
    eq(rec["content_type"], "video/webm", "content_type from filetype")
    verify_download(r, rid, org.owner, path, sha, size)


def aborted_upload_resumes_with_a_new_client_instance():
    size, chunk = 24 * MB, 8 * MB
    path, sha = random_file(files, "abort.bin", size)
    title = _title("abort")
    res = node("abort_resume.mjs", {
        "endpoint": ENDPOINT, "token": org.owner, "file": path, "chunkSize": chunk,
        "abortAfter": 12 * MB, "rate": 16 * MB,  # mid second PATCH
        "metadata": {"filename": "abort.webm", "filetype": "video/webm", "title": title}})
    if not res.get("ok"):
        raise AssertionError(f"resume failed: {res}")
    eq(_statuses(res["first"], "PATCH")[:1], [204], "first instance's first PATCH")
    if any(q["method"] == "POST" for q in res["second"]):
        raise AssertionError(f"the second instance created a new upload: {res['second']}")
    head = [q for q in res["second"] if q["method"] == "HEAD"]
    eq(head[0]["status"] if head else None, 200, "HEAD of the second instance")
    if not res["acceptedBeforeAbort"] < res["abortedAfter"]:
        raise AssertionError(f"the abort did not land mid-PATCH: {res['first']}")
    # what the server acknowledged is never lost; what it has stays below
    # what the client sent; and the client did resume, not restart (the
    # aborted PATCH may still hold the upload for a moment: a 423 that
    # tus-js-client retries after a new HEAD is fine)
    lo, hi = res["acceptedBeforeAbort"], res["abortedAfter"]
    for q in head:
        off = int(q["offset"])
        if not (lo <= off <= hi and 0 < off < size):
            raise AssertionError(f"HEAD offset {off} outside [{lo}, {hi}] (size {size}): "
                                 f"{res['second']}")
    bad = [q for q in res["second"] if q["status"] not in (200, 204, 423)]
    if bad:
        raise AssertionError(f"unexpected answers to the second instance: {bad}")
    rid = recording_id_by_title(r, title)
    wait_status(r, rid, org.owner)
    verify_download(r, rid, org.owner, path, sha, size)


def creation_with_upload_from_tus_js_client():
    size = 3 * MB + 17
    res, rid, path, sha = _js_upload("cwu", size, 2 * MB, duringCreation=True)
    post = [q for q in res["requests"] if q["method"] == "POST"]
    eq(post[0]["status"], 201, "POST with a body")
    eq(int(post[0]["offset"] or -1), 2 * MB, "Upload-Offset of the creation-with-upload POST")
    wait_status(r, rid, org.owner)
    verify_download(r, rid, org.owner, path, sha, size)


def deferred_length_stream_from_tus_js_client():
    size = 5 * MB + 123
    res, rid, path, sha = _js_upload("defer", size, 1 * MB, source="stream", deferLength=True)
    eq(_statuses(res["requests"], "POST"), [201], "creation with Upload-Defer-Length")
    js = wait_status(r, rid, org.owner)
    eq(js["recording"]["size_bytes"], size, "size_bytes once the length is known")
    verify_download(r, rid, org.owner, path, sha, size)


def method_override_from_tus_js_client():
    size = 3 * MB
    res, rid, path, sha = _js_upload("override", size, 1 * MB, overridePatch=True)
    ov = [q for q in res["requests"] if q.get("override") == "PATCH"]
    eq([q["method"] for q in ov], ["POST"] * 3, "PATCHes sent as POST + X-HTTP-Method-Override")
    eq([q["status"] for q in ov], [204] * 3, "their statuses")
    wait_status(r, rid, org.owner)
    verify_download(r, rid, org.owner, path, sha, size)


def _new_upload(length, tag):
    title = _title(tag)
    st, path, hd, raw = tus_create(r, org.owner, length,
                                   metadata(filename=f"{tag}.webm", filetype="video/webm",
                                            title=title))
    eq(st, 201, f"POST /api/uploads/ ({raw[:200]!r})")
    if not path or not path.startswith("/api/uploads/"):
        raise AssertionError(f"Location {hd.get('location')!r}")
    return path, title


def checksum_mismatch_is_460_and_keeps_the_offset():
    data = os.urandom(3 * 256 * 1024)
    a, b, c = data[:262144], data[262144:524288], data[524288:]
    path, title = _new_upload(len(data), "cks")
    st, off, _, raw = tus_patch(r, path, org.owner, 0, a,
                                {"Upload-Checksum": checksum("sha256", a)})
    eq((st, off), (204, len(a)), f"PATCH with a good sha256 ({raw[:200]!r})")
    bad = checksum("sha256", b[:-1] + bytes([b[-1] ^ 1]))
    st, _, _, raw = tus_patch(r, path, org.owner, len(a), b, {"Upload-Checksum": bad})
    eq(st, 460, f"PATCH with a wrong sha256 ({raw[:200]!r})")
    st, off, _ = tus_head(r, path, org.owner)
    eq((st, off), (200, len(a)), "HEAD after the mismatch")
    st, _, _, _ = tus_patch(r, path, org.owner, len(a), b,
                            {"Upload-Checksum": checksum("sha1", b[1:] + b"x")})
    eq(st, 460, "PATCH with a wrong sha1")
    st, off, _, _ = tus_patch(r, path, org.owner, len(a), b,
                              {"Upload-Checksum": checksum("sha1", b)})
    eq((st, off), (204, len(a) + len(b)), "PATCH with a good sha1")
    st, off, _, _ = tus_patch(r, path, org.owner, len(a) + len(b), c)
    eq((st, off), (204, len(data)), "last PATCH")
    rid = recording_id_by_title(r, title)
    wait_status(r, rid, org.owner)
    src = os.path.join(files, "cks.bin")
    with open(src, "wb") as f:
        f.write(data)
    verify_download(r, rid, org.owner, src, hashlib.sha256(data).hexdigest(), len(data))


def wrong_offset_is_409_and_changes_nothing():
    data = os.urandom(200000)
    path, _ = _new_upload(len(data), "off")
    st, off, _, _ = tus_patch(r, path, org.owner, 0, data[:100000])
    eq((st, off), (204, 100000), "first PATCH")
    for wrong in (0, 99999, 100001, 200000):
        st, _, hd, raw = tus_patch(r, path, org.owner, wrong, data[wrong:wrong + 1000] or b"x")
        eq(st, 409, f"PATCH at offset {wrong} ({raw[:200]!r})")
        eq(hd.get("tus-resumable"), "1.0.0", "Tus-Resumable on the 409")
    st, off, _ = tus_head(r, path, org.owner)
    eq((st, off), (200, 100000), "HEAD after the refused PATCHes")
    st, off, _, _ = tus_patch(r, path, org.owner, 100000, data[100000:])
    eq((st, off), (204, len(data)), "the right PATCH still works")


def _wait_lease(title, timeout=10):
    """Until the first PATCH holds the upload's lease (schema: one PATCH
    at a time per upload), so that the second one surely comes second."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if psql("SELECT count(*) FROM recordings WHERE title = "
                f"'{title}' AND upload_lease_expires_at > now()", db=r.db) == "1":
            return
        time.sleep(0.05)
    raise AssertionError("the first PATCH never took the upload's lease")


def concurrent_patch_on_one_upload_is_refused():
    size = 2 * MB
    data = os.urandom(size)
    path, title = _new_upload(size, "conc")
    first = 1 * MB
    s = socket.create_connection(("127.0.0.1", r.port), timeout=30)
    try:
        head = (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {org.owner}\r\nTus-Resumable: 1.0.0\r\n"
                f"Upload-Offset: 0\r\nContent-Type: {OCTETS}\r\n"
                f"Content-Length: {first}\r\n\r\n").encode()
        s.sendall(head + data[:256 * 1024])
        _wait_lease(title)
        t0 = time.time()
        st, _, hd, raw = tus_patch(r, path, org.owner, 0, data[:64 * 1024], timeout=20)
        if st not in (423, 409):
            raise AssertionError(f"second PATCH got {st}, want 423 or 409 ({raw[:200]!r})")
        if time.time() - t0 > 5:
            raise AssertionError("the second PATCH waited for the first one")
        s.sendall(data[256 * 1024:first])
        resp = b""
        while b"\r\n\r\n" not in resp:
            b = s.recv(65536)
            if not b:
                break
            resp += b
    finally:
        s.close()
    status_line = resp.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 204 " not in status_line + " ":
        raise AssertionError(f"first PATCH answered {status_line!r}")
    st, off, _ = tus_head(r, path, org.owner)
    eq((st, off), (200, first), "HEAD: only the first PATCH's bytes")
    st, off, _, _ = tus_patch(r, path, org.owner, first, data[first:])
    eq((st, off), (204, size), "the upload goes on")


def expired_upload_is_gone_with_its_bytes():
    path, title = _new_upload(1 * MB, "exp")
    st, off, hd, _ = tus_patch(r, path, org.owner, 0, os.urandom(300000))
    eq((st, off), (204, 300000), "PATCH")
    if not hd.get("upload-expires"):
        raise AssertionError("no Upload-Expires on the PATCH response")
    uid = path.rstrip("/").rsplit("/", 1)[1]
    if not upload_files(r, uid):
        raise AssertionError(f"no bytes of upload {uid} under data_dir/uploads before expiry")
    psql("UPDATE recordings SET upload_expires_at = now() - interval '1 hour' "
         f"WHERE title = '{title}'", db=r.db)
    deadline = time.time() + 20
    st = None
    while time.time() < deadline:
        st, _, _ = tus_head(r, path, org.owner)
        if st in (404, 410) and not upload_files(r, uid):
            break
        time.sleep(0.2)
    if st not in (404, 410):
        raise AssertionError(f"HEAD on an expired upload: {st}, want 404 or 410")
    left = upload_files(r, uid)
    if left:
        raise AssertionError(f"bytes of the expired upload still stored: {left}")
    st, _, _, _ = tus_patch(r, path, org.owner, 300000, b"more")
    if st not in (404, 410):
        raise AssertionError(f"PATCH on an expired upload: {st}, want 404 or 410")


def termination_removes_the_upload():
    path, _ = _new_upload(1 * MB, "term")
    st, off, _, _ = tus_patch(r, path, org.owner, 0, os.urandom(100000))
    eq((st, off), (204, 100000), "PATCH")
    uid = path.rstrip("/").rsplit("/", 1)[1]
    st, _, hd, raw = r.request("DELETE", path, token=org.owner, headers=dict(TUS))
    eq(st, 204, f"DELETE ({raw[:200]!r})")
    eq(hd.get("tus-resumable"), "1.0.0", "Tus-Resumable on the DELETE response")
    st, _, _ = tus_head(r, path, org.owner)
    if st not in (404, 410):
        raise AssertionError(f"HEAD after termination: {st}, want 404 or 410")
    st, _, _, _ = tus_patch(r, path, org.owner, 100000, b"x")
    if st not in (404, 410):
        raise AssertionError(f"PATCH after termination: {st}, want 404 or 410")
    left = upload_files(r, uid)
    if left:
        raise AssertionError(f"bytes of the terminated upload still stored: {left}")


def options_advertises_the_extensions():
    st, _, hd, raw = r.request("OPTIONS", "/api/uploads/", token=org.owner)
    if st not in (200, 204):
        raise AssertionError(f"OPTIONS status {st} ({raw[:200]!r})")
    eq(hd.get("tus-resumable"), "1.0.0", "Tus-Resumable")
    if "1.0.0" not in (hd.get("tus-version") or "").split(","):
        raise AssertionError(f"Tus-Version {hd.get('tus-version')!r}")
    ext = {e.strip() for e in (hd.get("tus-extension") or "").split(",")}
    want = {"creation", "creation-with-upload", "creation-defer-length", "termination",
            "expiration", "checksum"}
    if not want <= ext:
        raise AssertionError(f"Tus-Extension lacks {sorted(want - ext)}: "
                             f"{hd.get('tus-extension')!r}")
    algs = {a.strip() for a in (hd.get("tus-checksum-algorithm") or "").split(",")}
    if not {"sha1", "sha256"} <= algs:
        raise AssertionError(f"Tus-Checksum-Algorithm {hd.get('tus-checksum-algorithm')!r}")
    mx = hd.get("tus-max-size") or ""
    if not mx.isdigit() or int(mx) < 1024 * MB:
        raise AssertionError(f"Tus-Max-Size {mx!r} (a 1 GiB recording must fit)")


run_all(globals())
r.stop()
shutil.rmtree(files, ignore_errors=True)
shutil.rmtree(r.tmp, ignore_errors=True)
done()
