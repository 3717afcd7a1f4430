#!/usr/bin/env python3
"""Authorization matrix of the recording and upload routes (SPEC 6-7,
issue 3 "What it must show").

Every route that `$REELD_BIN routes` lists under /api/recordings or
/api/uploads (plus POST /api/upload-url) is called as five identities:
the owner of the recording, another member of the same organization, the
organization's admin, a member of another organization, and no token.
Each cell has its expected status; a route the binary registers that the
matrix does not know fails the test, so a new route cannot ship without
its row. Mutating cells run against a fresh recording or upload each, and
refused mutations are checked to have changed nothing. One PASS/FAIL line
per route."""
import os
import re
import shutil
import subprocess

from harness import BIN, Reeld, check, done, psql
from tusutil import (OCTETS, TUS, Org, metadata, public_env, recording_id_by_title,
                     tus_create, tus_head, tus_patch)

IDS = ("owner", "other", "admin", "foreign", "none")
OK2 = {200, 204}
# expected status (or set of statuses) per identity, in IDS order
ANY_MEMBER = lambda ok: (ok, ok, ok, ok, 401)  # noqa: E731 - a table helper
READ = (200, 200, 200, 404, 401)
MUTATE = lambda ok: (ok, 403, ok, 404, 401)  # noqa: E731

# (method, pattern with :id) -> (expected, fixture, required)
#   fixture: "none" (collection route), "recording" (a recording with its
#   bytes stored), "upload" (a tus upload in progress)
#   required: the route must be registered in this issue (SPEC 7)
MATRIX = {
    ("POST", "/api/recordings"): (ANY_MEMBER(201), "none", True),
    ("GET", "/api/recordings"): (ANY_MEMBER(200), "none", True),
    ("POST", "/api/upload-url"): (ANY_MEMBER(201), "none", True),
    ("GET", "/api/recordings/:id"): (READ, "recording", True),
    ("PUT", "/api/recordings/:id"): (MUTATE(200), "recording", True),
    ("DELETE", "/api/recordings/:id"): (MUTATE(204), "recording", True),
    ("POST", "/api/recordings/:id/complete"): (MUTATE({200, 202}), "recording", True),
    ("GET", "/api/recordings/:id/video"): (READ, "recording", True),
    ("POST", "/api/recordings/:id/publish"): (MUTATE(200), "recording", True),
    # pipeline routes (a later issue): checked when registered; a stage that
    # has not failed may be refused with 409
    ("POST", "/api/recordings/:id/retry"): (MUTATE({202, 409}), "recording", False),
    ("POST", "/api/recordings/:id/document/regenerate"): (MUTATE({202, 409}), "recording",
                                                          False),
    # OPTIONS is tus discovery (and a CORS preflight carries no token): 2xx
    # for everyone, or 401 without a token
    ("OPTIONS", "/api/uploads"): ((OK2, OK2, OK2, OK2, OK2 | {401}), "none", True),
    ("POST", "/api/uploads"): (ANY_MEMBER(201), "none", True),
    ("HEAD", "/api/uploads/:id"): (READ, "upload", True),
    ("PATCH", "/api/uploads/:id"): (MUTATE(204), "upload", True),
    ("DELETE", "/api/uploads/:id"): (MUTATE(204), "upload", True),
    # X-HTTP-Method-Override: PATCH over POST, when routed separately
    ("POST", "/api/uploads/:id"): (MUTATE(204), "upload", False),
}
BODIES = {
    ("POST", "/api/recordings"): {"title": "matrix"},
    ("POST", "/api/upload-url"): {"name": "m.webm", "size": 1000, "content_type": "video/webm"},
    ("PUT", "/api/recordings/:id"): {"title": "renamed by matrix"},
    ("POST", "/api/recordings/:id/complete"): {},
    ("POST", "/api/recordings/:id/publish"): {"publish": True},
    ("POST", "/api/recordings/:id/retry"): {},
    ("POST", "/api/recordings/:id/document/regenerate"): {},
}
BYTES = b"0123456789"


def _norm(pattern):
    """Compares patterns whatever the parameter's name or a trailing '/'."""
    p = re.sub(r"/:[^/]+", "/:id", pattern)
    p = re.sub(r"/\*$", "", p)  # a tail route: the collection and below
    return p.rstrip("/") or "/"


def _routes():
    out = subprocess.run([BIN, "routes"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"{BIN} routes failed: {out.stderr}")
    rs = []
    for line in out.stdout.splitlines():
        if " " in line:
            m, p = line.split(" ", 1)
            rs.append((m, p.strip()))
    return rs


def _ours(p):
    n = _norm(p)
    return n == "/api/recordings" or n.startswith("/api/recordings/") or \
        n == "/api/uploads" or n.startswith("/api/uploads/") or n == "/api/upload-url"


ROUTES = [(m, p) for m, p in _routes() if _ours(p)]
# registered pattern (as spelled) per normalized (method, pattern)
SPELLED = {}
for _m, _p in ROUTES:
    for (mm, pp) in MATRIX:
        if _norm(_p) == pp and (_m == mm or _m == "*"):
            SPELLED[(mm, pp)] = _p

r = Reeld()
public_env(r)
r.start()
A = Org(r, "mx-a")
B = Org(r, "mx-b")
TOKENS = {"owner": A.owner, "other": A.other, "admin": A.admin, "foreign": B.owner,
          "none": None}


def _fixture_upload():
    title = f"matrix {os.urandom(4).hex()}"
    st, path, _, raw = tus_create(r, A.owner, len(BYTES),
                                  metadata(filename="m.webm", filetype="video/webm",
                                           title=title))
    if st != 201 or not path:
        raise RuntimeError(f"fixture: POST /api/uploads/ got {st} {raw[:200]!r}")
    return path, title


def _fixture_recording():
    path, title = _fixture_upload()
    st, off, _, raw = tus_patch(r, path, A.owner, 0, BYTES)
    if (st, off) != (204, len(BYTES)):
        raise RuntimeError(f"fixture: PATCH got {st} {off} {raw[:200]!r}")
    return recording_id_by_title(r, title), path


def _call(method, pattern, spelled, who, fixture):
    """One cell; returns (status, state for the after-check)."""
    tok = TOKENS[who]
    state = {}
    if fixture == "recording":
        rid, upath = _fixture_recording()
        state.update(rid=rid, upath=upath)
        url = re.sub(r"/:[^/]+", "/" + rid, spelled)
    elif fixture == "upload":
        upath, title = _fixture_upload()
        state.update(upath=upath, title=title)
        url = upath
    else:
        url = re.sub(r"/\*$", "/", spelled)
    body = BODIES.get((method, pattern))
    headers = {}
    if pattern.startswith("/api/uploads"):
        headers.update(TUS)
    if (method, pattern) == ("POST", "/api/uploads"):
        headers["Upload-Length"] = str(len(BYTES))
        headers["Upload-Metadata"] = metadata(filename="m.webm", filetype="video/webm",
                                              title="matrix created")
    if method == "PATCH" or (method, pattern) == ("POST", "/api/uploads/:id"):
        headers.update({"Upload-Offset": "0", "Content-Type": OCTETS})
        if method == "POST":
            headers["X-HTTP-Method-Override"] = "PATCH"
        body = BYTES
    if (method, pattern) == ("POST", "/api/uploads") and "?" not in url:
        url = url if url.endswith("/") else url + "/"
    st, js, _, raw = r.request(method, url, body=body, token=tok, headers=headers)
    state.update(js=js, raw=raw)
    return st, state


def _after(method, pattern, who, st, state):
    """A refused mutation changed nothing; a listing shows only its org."""
    if (method, pattern) == ("GET", "/api/recordings") and st == 200:
        mine = psql(f"SELECT id FROM recordings WHERE org_id = '{A.id}' AND deleted_at IS NULL "
                    "ORDER BY created_at DESC LIMIT 1", db=r.db)
        ids = {x["id"] for x in (state["js"] or {}).get("recordings", [])}
        if who == "foreign" and mine in ids:
            return "lists a recording of another organization"
        if who != "foreign" and mine and mine not in ids:
            return "does not list its organization's newest recording"
    if st < 400:
        return None
    if "rid" in state:
        gst, js, _, _ = r.get(f"/api/recordings/{state['rid']}", token=A.owner)
        if gst != 200:
            return f"the refused call removed the recording (detail {gst})"
        if pattern == "/api/recordings/:id" and method == "PUT" and \
                js["recording"]["title"] == BODIES[(method, pattern)]["title"]:
            return "the refused PUT changed the title"
        if pattern.endswith("/publish") and js["recording"]["published"]:
            return "the refused publish published it"
    if "upath" in state and pattern.startswith("/api/uploads"):
        hst, off, _ = tus_head(r, state["upath"], A.owner)
        if hst != 200 or off != 0:
            return f"the refused call changed the upload (HEAD {hst}, offset {off})"
    return None


def _row(method, pattern):
    expected, fixture, _ = MATRIX[(method, pattern)]
    spelled = SPELLED[(method, pattern)]

    def fn():
        cells, bad = [], []
        for who, want in zip(IDS, expected):
            wants = want if isinstance(want, set) else {want}
            st, state = _call(method, pattern, spelled, who, fixture)
            note = _after(method, pattern, who, st, state) if st in wants else None
            if st not in wants:
                cells.append(f"{who}={st}(want {'/'.join(map(str, sorted(wants)))})")
                bad.append(f"{who}: {state['raw'][:120]!r}")
            elif note:
                cells.append(f"{who}={st}({note})")
                bad.append(note)
            else:
                cells.append(f"{who}={st}")
        if bad:
            raise AssertionError(" ".join(cells) + " | " + "; ".join(bad))
    return fn


def every_route_is_in_the_matrix():
    unknown = []
    for m, p in ROUTES:
        n = _norm(p)
        if m == "*":
            if not any(pp == n for (_, pp) in MATRIX):
                unknown.append(f"{m} {p}")
        elif (m, n) not in MATRIX:
            unknown.append(f"{m} {p}")
    if unknown:
        raise AssertionError(f"routes without a row in the matrix: {unknown}")


def every_required_route_is_registered():
    missing = [f"{m} {p}" for (m, p), (_, _, req) in MATRIX.items()
               if req and (m, p) not in SPELLED]
    if missing:
        raise AssertionError(f"not registered: {missing}")


check("every_route_is_in_the_matrix", every_route_is_in_the_matrix)
check("every_required_route_is_registered", every_required_route_is_registered)



def _cells(expected):
    return " ".join(f"{who}={'/'.join(map(str, sorted(w))) if isinstance(w, set) else w}"
                    for who, w in zip(IDS, expected))


for (_m, _p), (_exp, _, _) in MATRIX.items():
    if (_m, _p) in SPELLED:
        check(f"authz {_m} {_p}: {_cells(_exp)}", _row(_m, _p))
r.stop()
shutil.rmtree(r.tmp, ignore_errors=True)
done()
