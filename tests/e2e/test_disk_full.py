#!/usr/bin/env python3
"""Bad input on the upload path (issue 3 "What it must show").

Disk full: reeld's data dir is a 20 MB tmpfs (mounted here, as root, and
unmounted at the end even on failure), most of it taken by a filler file;
an upload larger than the free space gets 507 on a PATCH, stays
resumable, and once the filler is removed it resumes from HEAD's offset
and completes with the bytes intact. Also: ids that are not UUIDs answer
404 on every recording and upload route, and oversized or malformed
Upload-Metadata answers 400."""
import base64
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

from harness import BIN, Reeld, check, done, eq
from tusutil import (TUS, OCTETS, Org, metadata, public_env, recording_id_by_title,
                     tus_create, tus_head, tus_patch, verify_download, wait_status)

MB = 1024 * 1024
TMPFS_SIZE = 20 * MB


def _mount():
    if os.geteuid() != 0:
        raise RuntimeError("needs root to mount a tmpfs")
    mnt = tempfile.mkdtemp(prefix="reeld-diskfull-")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700",
                          "tmpfs", mnt], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        os.rmdir(mnt)
        raise RuntimeError(f"mount -t tmpfs failed: {out.stderr.strip()}")
    return mnt


def _umount(mnt):
    if subprocess.run(["umount", mnt], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)
    try:
        os.rmdir(mnt)
    except OSError:
        pass


def _free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _disk_full_then_resume(r, org, mnt):
    filler = os.path.join(mnt, "filler")
    # leave about 6 MB free, then upload 10 MB
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, _free(mnt) - 6 * MB))
    size = 10 * MB
    if _free(mnt) >= size:
        raise RuntimeError(f"the filler left {_free(mnt)} bytes free")
    data = os.urandom(size)
    title = f"diskfull {os.urandom(4).hex()}"
    st, path, _, raw = tus_create(r, org.owner, size,
                                  metadata(filename="full.webm", filetype="video/webm",
                                           title=title))
    eq(st, 201, f"POST /api/uploads/ ({raw[:200]!r})")
    acked, full = 0, None
    while acked < size:
        st, off, hd, raw = tus_patch(r, path, org.owner, acked, data[acked:acked + MB])
        if st == 507:
            full = (acked, raw)
            break
        eq((st, off), (204, acked + min(MB, size - acked)), f"PATCH at {acked} ({raw[:200]!r})")
        acked = off
    if full is None:
        raise AssertionError(f"no 507 although only {_free(mnt)} bytes were free")
    eq(r.get("/healthz")[0], 200, "reeld alive after ENOSPC")
    st, off, _ = tus_head(r, path, org.owner)
    eq(st, 200, "HEAD after the 507")
    if not acked <= off <= acked + MB:
        raise AssertionError(f"HEAD offset {off} after the 507; acknowledged before: {acked}")
    rid = recording_id_by_title(r, title)
    st, js, _, _ = r.get(f"/api/recordings/{rid}", token=org.owner)
    eq(js["recording"]["status"], "uploading", "status after the 507 (still resumable)")
    os.unlink(filler)
    while off < size:
        st, noff, _, raw = tus_patch(r, path, org.owner, off, data[off:off + 2 * MB])
        eq((st, noff), (204, min(size, off + 2 * MB)), f"resumed PATCH at {off} ({raw[:200]!r})")
        off = noff
    wait_status(r, rid, org.owner)
    src = os.path.join(r.tmp, "full.bin")
    with open(src, "wb") as f:
        f.write(data)
    verify_download(r, rid, org.owner, src, hashlib.sha256(data).hexdigest(), size)


def disk_full_is_507_and_the_upload_resumes():
    mnt = _mount()
    r = None
    try:
        r = Reeld(env={"REELD_DATA_DIR": mnt})
        public_env(r)
        r.start()
        org = Org(r, "full")
        _disk_full_then_resume(r, org, mnt)
    finally:
        if r:
            r.stop()
        _umount(mnt)
        if r:
            shutil.rmtree(r.tmp, ignore_errors=True)


# ---- ids and metadata ---------------------------------------------------

r = Reeld()
public_env(r)
r.start()
org = Org(r, "bad")
BAD_IDS = ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g",
           "0000000000000000000000000000000000000", "%2e%2e", "..%2F..%2Fetc",
           "6f1c2a9e-1b7d-4c3e-9a8f-3d2e1f0a9b8c-x", "x" * 300]
BODIES = {"PUT": {"title": "t"}, "POST": {"publish": True}}


def _id_routes():
    out = subprocess.run([BIN, "routes"], capture_output=True, text=True, timeout=30)
    rs = []
    for line in out.stdout.splitlines():
        m, _, p = line.partition(" ")
        if re.match(r"^/api/(recordings|uploads)/:[^/]+", p):
            rs.append((m, p))
    if not rs:
        raise AssertionError("no /api/recordings/:id or /api/uploads/:id route registered")
    return rs


def non_uuid_ids_are_404_on_every_route():
    bad = []
    routes = _id_routes()
    # a well-formed UUID that names nothing is 404 as well
    for m, p in routes:
        for rid in BAD_IDS + ["6f1c2a9e-1b7d-4c3e-9a8f-3d2e1f0a9b8c"]:
            url = re.sub(r"/:[^/]+", "/" + rid, p, count=1)
            h, body = {}, BODIES.get(m)
            if p.startswith("/api/uploads"):
                h.update(TUS)
                if m in ("PATCH", "POST"):
                    h.update({"Upload-Offset": "0", "Content-Type": OCTETS})
                    if m == "POST":
                        h["X-HTTP-Method-Override"] = "PATCH"
                    body = b"abc"
            method = "GET" if m == "*" else m
            st, _, _, raw = r.request(method, url, body=body, token=org.owner, headers=h)
            if st != 404:
                bad.append(f"{method} {url[:60]} -> {st} {raw[:80]!r}")
    if bad:
        raise AssertionError(f"{len(bad)} not 404: " + "; ".join(bad[:12]))


def oversized_upload_metadata_is_400():
    big = "x" * 9000  # ~12 KB encoded: under the 16 KB header limit
    st, path, _, raw = tus_create(r, org.owner, 100, metadata(filename="a.webm", title=big))
    eq(st, 400, f"POST with {len(big)}-byte metadata value ({raw[:200]!r})")
    many = ",".join(f"k{i} {base64.b64encode(b'v').decode()}" for i in range(1500))
    st, _, _, raw = tus_create(r, org.owner, 100, many)
    eq(st, 400, f"POST with 1500 metadata pairs ({raw[:200]!r})")


def malformed_upload_metadata_is_400():
    # (a key alone, without a value, is valid tus)
    for meta in ["filename !!!notbase64!!!", "filename YQ==,filename Yg==",
                 "title " + base64.b64encode(b"\xff\xfe").decode(), "a b c"]:
        st, _, _, raw = tus_create(r, org.owner, 100, meta)
        eq(st, 400, f"Upload-Metadata {meta!r} ({raw[:200]!r})")


def metadata_title_beyond_the_column_is_not_a_500():
    st, path, _, raw = tus_create(r, org.owner, 100,
                                  metadata(filename="a.webm", title="t" * 600))
    if st not in (201, 400):
        raise AssertionError(f"600-character title: {st} ({raw[:200]!r}), want 201 or 400")


def upload_length_over_tus_max_size_is_413():
    _, _, hd, _ = r.request("OPTIONS", "/api/uploads/", token=org.owner)
    mx = int(hd.get("tus-max-size") or 0)
    if not mx:
        raise AssertionError("no Tus-Max-Size")
    st, _, _, raw = tus_create(r, org.owner, mx + 1, metadata(filename="big.webm"))
    eq(st, 413, f"Upload-Length {mx + 1} ({raw[:200]!r})")


check("disk_full_is_507_and_the_upload_resumes", disk_full_is_507_and_the_upload_resumes)
for _f in (non_uuid_ids_are_404_on_every_route, oversized_upload_metadata_is_400,
           malformed_upload_metadata_is_400, metadata_title_beyond_the_column_is_not_a_500,
           upload_length_over_tus_max_size_is_413):
    check(_f.__name__, _f)
r.stop()
shutil.rmtree(r.tmp, ignore_errors=True)
done()
