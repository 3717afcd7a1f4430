"""Helpers the upload tests share (test_tus_client, test_authz_matrix,
test_disk_full, test_pipeline, test_pipeline_crash): raw tus 1.0.0
requests against a Reeld, an organization with members, random files,
speech videos, the tus-js-client scripts of tests/e2e/js and downloads
that hash what they read."""
import base64
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.parse

from harness import ROOT, eq, psql

JS_DIR = os.path.join(ROOT, "tests", "e2e", "js")
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
# The statuses a recording goes through after its upload (SPEC 7, 8), in order.
PIPELINE_ORDER = ["uploaded", "transcribing", "transcribed", "doc_generating", "embedding",
                  "completed"]
AFTER_UPLOAD = set(PIPELINE_ORDER)


def public_env(r):
    """REELD_PUBLIC_URL for r's port, so that the upload and video URLs
    reeld hands out point at this process (call before r.start())."""
    r.env["REELD_PUBLIC_URL"] = f"http://127.0.0.1:{r.port}"


class Org:
    """An organization: admin (creator), owner and other (members)."""

    def __init__(self, r, tag):
        self.r = r
        t = r.token(f"{tag}-admin")
        st, js, _, raw = r.post("/api/organizations", {"name": f"Org {tag}"}, token=t)
        if st != 201:
            raise RuntimeError(f"POST /api/organizations: {st} {raw[:200]!r}")
        self.id = js["organization"]["id"]
        self.admin = r.token(f"{tag}-admin", org=self.id, role="admin")
        self.owner = r.token(f"{tag}-owner", org=self.id, role="member")
        self.other = r.token(f"{tag}-other", org=self.id, role="member")
        # first sight mirrors the claims into memberships
        for tok in (self.admin, self.owner, self.other):
            st, _, _, raw = r.get("/api/organizations/current", token=tok)
            if st != 200:
                raise RuntimeError(f"GET /api/organizations/current: {st} {raw[:200]!r}")


def metadata(**kv):
    """An Upload-Metadata value: comma-separated "key base64(value)"."""
    return ",".join(f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in kv.items())


def path_of(url):
    """The path of an absolute or relative URL (Location, video_url)."""
    u = urllib.parse.urlsplit(url)
    return u.path + (("?" + u.query) if u.query else "")


def tus_create(r, token, length=None, meta=None, body=None, headers=None):
    """POST /api/uploads/; returns (status, upload path or None, headers, raw)."""
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
    return st, (path_of(loc) if loc else None), hd, raw


def tus_head(r, path, token):
    st, _, hd, _ = r.request("HEAD", path, token=token, headers=dict(TUS))
    off = hd.get("upload-offset")
    return st, (int(off) if off is not None else None), hd


def tus_patch(r, path, token, offset, data, headers=None, timeout=60):
    h = dict(TUS)
    h.update({"Upload-Offset": str(offset), "Content-Type": OCTETS})
    h.update(headers or {})
    st, _, hd, raw = r.request("PATCH", path, body=data, token=token, headers=h,
                               timeout=timeout)
    off = hd.get("upload-offset")
    return st, (int(off) if off is not None else None), hd, raw


def checksum(alg, data):
    d = hashlib.new(alg, data).digest()
    return f"{alg} {base64.b64encode(d).decode()}"


def recording_id_by_title(r, title):
    rid = psql(f"SELECT id FROM recordings WHERE title = '{title}'", db=r.db)
    if not rid:
        raise AssertionError(f"no recording titled {title!r}")
    return rid


def upload_files(r, upload_id):
    """Names under <data_dir>/uploads that belong to upload_id."""
    d = os.path.join(r.env["REELD_DATA_DIR"], "uploads")
    if not os.path.isdir(d):
        return []
    return [n for n in os.listdir(d) if n.startswith(upload_id)]


def random_file(dirname, name, size):
    """A file of size random bytes; returns (path, sha256 hex)."""
    path = os.path.join(dirname, name)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(left, 1 << 20))
            h.update(b)
            f.write(b)
            left -= len(b)
    return path, h.hexdigest()


def speech_video(dirname, sentence, name="speech.mp4"):
    """dirname/name (made once): an MP4 with a 320x240 test pattern and the
    sentence as its sound track, spoken by flite's slt voice (pocketsphinx
    recognizes it; espeak-ng's formant voice comes back as other words)."""
    path = os.path.join(dirname, name)
    if os.path.exists(path):
        return path
    if not shutil.which("flite"):
        raise RuntimeError("flite is needed (scripts/deps.sh TEST_PKGS)")
    wav = path + ".wav"
    subprocess.run(["flite", "-voice", "slt", "-t", sentence, "-o", wav], check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=10", "-i", wav, "-shortest", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", path],
                   check=True, capture_output=True, timeout=120)
    return path


def read_range(path, start, end):
    """Bytes start..end (inclusive) of a file."""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start + 1)


def fetch(r, path, token=None, headers=None, timeout=120):
    """GET streamed into sha256; returns (status, headers, sha256, size, body
    when at most 1 MiB else None)."""
    c = http.client.HTTPConnection("127.0.0.1", r.port, timeout=timeout)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    c.request("GET", path, headers=h)
    resp = c.getresponse()
    sha = hashlib.sha256()
    n = 0
    small = b""
    while True:
        b = resp.read(1 << 20)
        if not b:
            break
        sha.update(b)
        n += len(b)
        if n <= (1 << 20):
            small += b
    hd = dict((k.lower(), v) for k, v in resp.getheaders())
    c.close()
    return resp.status, hd, sha.hexdigest(), n, (small if n <= (1 << 20) else None)


def wait_status(r, rid, token, want=AFTER_UPLOAD, timeout=15):
    """Polls the detail until the status is in want; returns the detail."""
    deadline = time.time() + timeout
    js = None
    while time.time() < deadline:
        st, js, _, raw = r.get(f"/api/recordings/{rid}", token=token)
        eq(st, 200, f"GET /api/recordings/{rid} ({raw[:200]!r})")
        s = js["recording"]["status"]
        if s in want:
            return js
        if s == "error" and (js["recording"].get("error") or {}).get("stage") != "upload":
            # a later stage failed on random bytes: the upload itself finished
            return js
        time.sleep(0.1)
    raise AssertionError(f"status stayed {js['recording']['status'] if js else None!r}, "
                         f"wanted one of {sorted(want)}")


def verify_download(r, rid, token, src_path, src_sha, size):
    """The detail's video_url (signed, no Bearer) returns the same bytes;
    single Ranges (one across the 5 MiB boundary, an open-ended tail) return
    the right slices with 206 and Content-Range."""
    st, js, _, raw = r.get(f"/api/recordings/{rid}", token=token)
    eq(st, 200, "detail status")
    url = js.get("video_url")
    if not url or "sig=" not in url or "exp=" not in url:
        raise AssertionError(f"video_url is not a signed URL: {url!r}")
    p = path_of(url)
    st, hd, sha, n, _ = fetch(r, p)
    eq(st, 200, "signed video GET status")
    eq(n, size, "downloaded size")
    eq(sha, src_sha, "sha256 of the download")
    eq(hd.get("accept-ranges"), "bytes", "Accept-Ranges")
    a = min(5 * 1024 * 1024 - 1000, size // 2)
    b = min(a + 4095, size - 1)
    for rng, lo, hi in [(f"bytes={a}-{b}", a, b),
                        (f"bytes={size - 1000}-", size - 1000, size - 1)]:
        st, hd, sha, n, body = fetch(r, p, headers={"Range": rng})
        eq(st, 206, f"status for Range {rng}")
        eq(hd.get("content-range"), f"bytes {lo}-{hi}/{size}", f"Content-Range for {rng}")
        want = read_range(src_path, lo, hi)
        eq(n, len(want), f"length for Range {rng}")
        if body != want:
            raise AssertionError(f"Range {rng}: bytes differ from the upload")


def npm_ready():
    """tus-js-client installed in tests/e2e/js (tests/run runs npm ci)."""
    if not os.path.isfile(os.path.join(JS_DIR, "node_modules", "tus-js-client",
                                       "package.json")):
        raise RuntimeError("tests/e2e/js/node_modules lacks tus-js-client: "
                           "run `npm ci` in tests/e2e/js (tests/run does it)")


def node(script, opts, timeout=240):
    """Runs tests/e2e/js/<script> with opts as its JSON argument; returns
    the JSON object it printed last."""
    npm_ready()
    out = subprocess.run(["node", os.path.join(JS_DIR, script), json.dumps(opts)],
                         capture_output=True, text=True, timeout=timeout, cwd=JS_DIR)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise AssertionError(f"{script} printed no result (exit {out.returncode}): "
                             f"{out.stdout[-500:]} {out.stderr[-1500:]}")
    res = json.loads(lines[-1])
    if out.stderr.strip():
        res["stderr"] = out.stderr[-2000:]
    return res
