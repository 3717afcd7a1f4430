"""The recording resource over HTTP (SPEC 7, issue 3 item 1): create (both
names), defaults, validation, list with filters and total, the detail's
shape, update, complete (idempotent, 409 while bytes are missing), delete
(file and row gone, then 404), and another organization's ids answering
404 on every route. Bytes are sent with plain tus PATCHes; the tus
protocol itself is tests/e2e/test_tus_protocol.py."""
import datetime
import json
import os
import time
import uuid

from harness import Reeld, assert_error, done, eq, psql, run_all

# The API alone: no pipeline stage runs here (test_pipeline covers them),
# so a finished upload stays 'uploaded' for the checks below.
r = Reeld(env={"REELD_WORKERS": "off"})
PUBLIC = f"http://127.0.0.1:{r.port}"
r.env["REELD_PUBLIC_URL"] = PUBLIC
r.start()
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def _org(tag):
    """An organization: (id, admin, owner, other) tokens; owner and other
    are members."""
    admin = r.token(f"{tag}-admin")
    st, js, _, raw = r.post("/api/organizations", {"name": f"Org {tag}"}, token=admin)
    eq(st, 201, f"create org {raw[:200]!r}")
    oid = js["organization"]["id"]
    admin = r.token(f"{tag}-admin", org=oid, role="admin")
    owner = r.token(f"{tag}-owner", org=oid, role="member")
    other = r.token(f"{tag}-other", org=oid, role="member")
    for t in (admin, owner, other):
        eq(r.get("/api/organizations/current", token=t)[0], 200)
    return oid, admin, owner, other


ORG, ADMIN, OWNER, OTHER = _org("rec")
_, OUT_ADMIN, OUTSIDER, _ = _org("rec-out")


def _user_id(sub):
    return psql(f"SELECT id FROM users WHERE external_id = '{sub}'", db=r.db)


def _create(token=OWNER, **body):
    st, js, h, raw = r.post("/api/recordings", body, token=token)
    eq(st, 201, f"POST /api/recordings {raw[:300]!r}")
    return js


def _upload(rid, data, token=OWNER):
    """Sends data with one tus PATCH at offset 0."""
    h = dict(TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS})
    st, _, hd, raw = r.request("PATCH", f"/api/uploads/{rid}", body=data, token=token,
                               headers=h)
    eq(st, 204, f"PATCH {raw[:200]!r}")
    eq(hd.get("upload-offset"), str(len(data)), "Upload-Offset")


def _key(rid):
    return psql(f"SELECT storage_key FROM recordings WHERE id = '{rid}'", db=r.db)


def _stored_path(rid):
    return os.path.join(r.tmp, "storage", _key(rid))


def create_returns_recording_and_tus_upload():
    js = _create(title="Quarterly demo", description="What we shipped", filename="demo.webm",
                 content_type="video/webm", size=1000)
    rec, up = js["recording"], js["upload"]
    for k in ("id", "org_id", "user_id", "title", "description", "status", "error",
              "content_type", "size_bytes", "duration_ms", "created_at", "updated_at",
              "completed_at", "published", "share_url"):
        if k not in rec:
            raise AssertionError(f"recording lacks {k}: {rec}")
    eq(rec["title"], "Quarterly demo")
    eq(rec["description"], "What we shipped")
    eq(rec["status"], "uploading")
    eq(rec["error"], None)
    eq(rec["content_type"], "video/webm")
    eq(rec["size_bytes"], 1000)
    eq(rec["duration_ms"], None)
    eq(rec["completed_at"], None)
    eq(rec["published"], False)
    eq(rec["share_url"], None)
    eq(rec["org_id"], ORG)
    eq(rec["user_id"], _user_id("rec-owner"))
    eq(up, {"protocol": "tus", "url": f"{PUBLIC}/api/uploads/{rec['id']}",
            "chunk_size": 5242880})
    eq(_key(rec["id"]), f"org-{ORG}/recordings/{rec['id']}.webm", "storage key")
    # the upload URL is a live tus resource
    st, _, h, _ = r.request("HEAD", f"/api/uploads/{rec['id']}", token=OWNER, headers=TUS)
    eq(st, 200)
    eq(h.get("upload-length"), "1000")
    eq(h.get("upload-offset"), "0")


def create_defaults():
    rec = _create()["recording"]
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    eq(rec["title"], f"Recording on {today}")
    eq(rec["description"], None)
    eq(rec["content_type"], None)
    eq(rec["size_bytes"], None)
    # without a size the upload's length is deferred
    st, _, h, _ = r.request("HEAD", f"/api/uploads/{rec['id']}", token=OWNER, headers=TUS)
    eq(st, 200)
    eq(h.get("upload-defer-length"), "1")
    # the extension comes from the content type when the filename has none
    rec = _create(filename="clip", content_type="audio/mpeg")["recording"]
    eq(_key(rec["id"]).rsplit(".", 1)[1], "mp3", "extension from content type")
    rec = _create(content_type="video/webm;codecs=vp8,opus")["recording"]
    eq(rec["content_type"], "video/webm;codecs=vp8,opus")


def upload_url_creates_the_same_shape():
    st, js, _, raw = r.post("/api/upload-url", {"name": "Team sync.final.mp4", "size": 10,
                                                "content_type": "video/mp4"}, token=OWNER)
    eq(st, 201, raw[:300])
    rec = js["recording"]
    eq(rec["title"], "Team sync.final")
    eq(rec["size_bytes"], 10)
    eq(rec["content_type"], "video/mp4")
    eq(js["upload"]["protocol"], "tus")
    eq(js["upload"]["url"], f"{PUBLIC}/api/uploads/{rec['id']}")
    eq(js["upload"]["chunk_size"], 5242880)
    eq(psql(f"SELECT filename FROM recordings WHERE id = '{rec['id']}'", db=r.db),
       "Team sync.final.mp4")
    eq(_key(rec["id"]).rsplit(".", 1)[1], "mp4")


def create_validates_input():
    bad = [{"title": ""}, {"title": "   "}, {"title": "x" * 501}, {"title": 5},
           {"description": "d" * 10001}, {"content_type": "text/plain"},
           {"content_type": "video"}, {"content_type": "video/"},
           {"content_type": "application/pdf"}, {"content_type": "video/mp4\u0001"},
           {"size": -1}, {"size": 10 * 1024 ** 3 + 1}, {"size": "10"}, {"size": 1.5},
           {"size": True}, {"filename": ""}]
    for body in bad:
        st, js, _, _ = r.post("/api/recordings", body, token=OWNER)
        try:
            assert_error(st, js, 422, "invalid_request")
        except AssertionError as e:
            raise AssertionError(f"{body!r}: {e}") from None
    for body in [{"size": 1, "content_type": "video/mp4"},
                 {"name": "a.mp4", "content_type": "video/mp4"},
                 {"name": "a.mp4", "size": 1},
                 {"name": "a.pdf", "size": 1, "content_type": "application/pdf"}]:
        st, js, _, _ = r.post("/api/upload-url", body, token=OWNER)
        assert_error(st, js, 422, "invalid_request")
    st, js, _, _ = r.post("/api/recordings", [1], token=OWNER)
    assert_error(st, js, 400, "invalid_request")
    # the largest size is accepted
    eq(_create(size=10 * 1024 ** 3)["recording"]["size_bytes"], 10 * 1024 ** 3)


def list_is_newest_first_with_total_and_filters():
    oid, admin, owner, other = _org("rec-list")
    mine = [_create(token=owner, title=f"mine {i}")["recording"]["id"] for i in range(3)]
    theirs = [_create(token=other, title=f"theirs {i}")["recording"]["id"] for i in range(2)]
    order = list(reversed(mine + theirs))
    st, js, _, _ = r.get("/api/recordings", token=admin)
    eq(st, 200)
    eq(js["total"], 5)
    eq(js["limit"], 20)
    eq(js["offset"], 0)
    eq([x["id"] for x in js["recordings"]], order, "newest first")
    js = r.get("/api/recordings?limit=2&offset=1", token=owner)[1]
    eq((js["total"], js["limit"], js["offset"]), (5, 2, 1))
    eq([x["id"] for x in js["recordings"]], order[1:3])
    js = r.get("/api/recordings?offset=10", token=owner)[1]
    eq((js["recordings"], js["total"]), ([], 5), "a page past the end keeps the total")
    psql(f"UPDATE recordings SET status = 'uploaded' WHERE id = '{mine[0]}'", db=r.db)
    js = r.get("/api/recordings?status=uploaded", token=owner)[1]
    eq(([x["id"] for x in js["recordings"]], js["total"]), ([mine[0]], 1))
    js = r.get(f"/api/recordings?user_id={_user_id('rec-list-other')}", token=owner)[1]
    eq(([x["id"] for x in js["recordings"]], js["total"]), (list(reversed(theirs)), 2))
    js = r.get(f"/api/recordings?status=uploading&user_id={_user_id('rec-list-owner')}",
               token=owner)[1]
    eq(js["total"], 2, "filters combine")
    eq(r.request("DELETE", f"/api/recordings/{mine[1]}", token=owner)[0], 204)
    js = r.get("/api/recordings?limit=100", token=owner)[1]
    eq(js["total"], 4, "deleted ones are not counted")
    if mine[1] in [x["id"] for x in js["recordings"]]:
        raise AssertionError("a deleted recording is listed")
    # a recording marked deleted but not yet removed is not listed either
    psql(f"UPDATE recordings SET deleted_at = now() WHERE id = '{mine[2]}'", db=r.db)
    eq(r.get("/api/recordings", token=owner)[1]["total"], 3)
    eq(r.get(f"/api/recordings/{mine[2]}", token=owner)[0], 404)


def list_rejects_bad_parameters():
    for q in ["limit=0", "limit=101", "limit=x", "limit=", "offset=-1", "offset=x",
              "status=bogus", "status=", "user_id=nope", "user_id=1234"]:
        st, js, _, _ = r.get(f"/api/recordings?{q}", token=OWNER)
        try:
            assert_error(st, js, 422, "invalid_request")
        except AssertionError as e:
            raise AssertionError(f"?{q}: {e}") from None
    eq(r.get("/api/recordings?limit=100", token=OWNER)[1]["limit"], 100)


def list_is_limited_to_the_callers_org():
    rid = _create(token=OUTSIDER, title="outside")["recording"]["id"]
    js = r.get("/api/recordings?limit=100", token=OWNER)[1]
    if rid in [x["id"] for x in js["recordings"]]:
        raise AssertionError("another organization's recording is listed")
    js = r.get(f"/api/recordings?user_id={_user_id('rec-out-owner')}", token=OWNER)[1]
    eq((js["recordings"], js["total"]), ([], 0))


def detail_has_the_full_shape():
    rid = _create(title="Detailed", content_type="video/mp4", size=4)["recording"]["id"]
    st, js, _, _ = r.get(f"/api/recordings/{rid}", token=OTHER)
    eq(st, 200, "any member may read")
    eq(sorted(js), ["document", "recording", "stages", "transcript", "video_url"])
    eq((js["transcript"], js["document"], js["stages"], js["video_url"]),
       (None, None, [], None), "nothing yet; no link before the upload completed")
    _upload(rid, b"abcd")
    words = [{"w": "hello", "start_ms": 0, "end_ms": 400},
             {"w": "world", "start_ms": 400, "end_ms": 900}]
    psql(f"INSERT INTO transcripts (recording_id, org_id, text, language, words, provider) "
         f"VALUES ('{rid}', '{ORG}', 'hello world', 'en', '{json.dumps(words)}', 'local');"
         f"INSERT INTO documents (recording_id, org_id, content, summary, model) "
         f"VALUES ('{rid}', '{ORG}', '# Doc', 'Short.', 'local');"
         f"INSERT INTO jobs (org_id, recording_id, stage, status, attempts, started_at, "
         f"finished_at) VALUES ('{ORG}', '{rid}', 'document', 'done', 1, now(), now()),"
         f"('{ORG}', '{rid}', 'transcription', 'failed', 2, now(), now());"
         f"UPDATE jobs SET last_error = 'boom' WHERE recording_id = '{rid}' "
         f"AND stage = 'transcription'", db=r.db)
    js = r.get(f"/api/recordings/{rid}", token=OWNER)[1]
    eq(js["transcript"], {"text": "hello world", "language": "en"}, "no words by default")
    eq(js["document"]["content"], "# Doc")
    eq(js["document"]["summary"], "Short.")
    eq(js["document"]["model"], "local")
    if not js["document"]["updated_at"].endswith("Z"):
        raise AssertionError(js["document"])
    eq([s["stage"] for s in js["stages"]], ["transcription", "document"], "pipeline order")
    t = js["stages"][0]
    eq(sorted(t), ["attempts", "error", "finished_at", "stage", "started_at", "status"])
    eq((t["status"], t["attempts"], t["error"]), ("failed", 2, "boom"))
    url = js["video_url"]
    if not url or not url.startswith(f"{PUBLIC}/api/recordings/{rid}/video?") or \
            "sig=" not in url or "exp=" not in url:
        raise AssertionError(f"video_url: {url!r}")
    js = r.get(f"/api/recordings/{rid}?words=1", token=OWNER)[1]
    eq(js["transcript"]["words"], words)


def update_changes_title_and_description():
    rid = _create(title="Before", description="keep")["recording"]["id"]
    st, js, _, _ = r.request("PUT", f"/api/recordings/{rid}", body={"title": "After"},
                             token=OWNER)
    eq(st, 200)
    eq((js["recording"]["title"], js["recording"]["description"]), ("After", "keep"))
    js = r.request("PUT", f"/api/recordings/{rid}", body={"description": "new"}, token=ADMIN)[1]
    eq((js["recording"]["title"], js["recording"]["description"]), ("After", "new"))
    for body in [{"title": ""}, {"title": "x" * 501}, {"description": "d" * 10001},
                 {"title": 3}]:
        st, js, _, _ = r.request("PUT", f"/api/recordings/{rid}", body=body, token=OWNER)
        assert_error(st, js, 422, "invalid_request")
    st, js, _, _ = r.request("PUT", f"/api/recordings/{rid}", body={"title": "Nope"},
                             token=OTHER)
    assert_error(st, js, 403, "forbidden")
    eq(r.get(f"/api/recordings/{rid}", token=OWNER)[1]["recording"]["title"], "After")


def complete_is_idempotent_and_409_while_bytes_are_missing():
    rid = _create(size=6, content_type="video/mp4")["recording"]["id"]
    st, js, _, _ = r.post(f"/api/recordings/{rid}/complete", token=OWNER)
    assert_error(st, js, 409, "conflict")
    st, js, _, _ = r.post(f"/api/recordings/{rid}/complete", token=OTHER)
    assert_error(st, js, 403, "forbidden")
    _upload(rid, b"abcdef")  # the last byte completes it by itself
    for _ in range(2):
        st, js, _, _ = r.post(f"/api/recordings/{rid}/complete", token=OWNER)
        eq(st, 200)
        eq(js["recording"]["status"], "uploaded")
    eq(psql(f"SELECT count(*) FROM events WHERE recording_id = '{rid}' "
            "AND type = 'recording.status' AND data->>'status' = 'uploaded'", db=r.db), "1",
       "one status event, not one per call")
    # a deferred upload without a length is never complete
    rid = _create()["recording"]["id"]
    st, js, _, _ = r.post(f"/api/recordings/{rid}/complete", token=OWNER)
    assert_error(st, js, 409, "conflict")


def complete_finishes_an_upload_whose_bytes_are_all_stored():
    """A crash after the last offset was recorded but before the file was
    moved: complete moves it and changes the status, with its event."""
    rid = _create(size=5, content_type="video/mp4", filename="x.mp4")["recording"]["id"]
    part = os.path.join(r.tmp, "uploads", f"{rid}.part")
    with open(part, "wb") as f:
        f.write(b"12345")
    psql(f"UPDATE recordings SET upload_offset = 5 WHERE id = '{rid}'", db=r.db)
    st, js, _, _ = r.post(f"/api/recordings/{rid}/complete", token=ADMIN)
    eq(st, 200)
    eq(js["recording"]["status"], "uploaded")
    with open(_stored_path(rid), "rb") as f:
        eq(f.read(), b"12345", "stored object")
    eq(os.path.exists(part), False, "in-progress file moved")
    data = json.loads(psql(f"SELECT data FROM events WHERE recording_id = '{rid}' "
                           "AND type = 'recording.status'", db=r.db))
    eq(data, {"recording_id": rid, "status": "uploaded", "stage": "upload", "error": None})
    st, js, _, _ = r.post(f"/api/recordings/{rid}/complete", token=OWNER)
    eq((st, js["recording"]["status"]), (200, "uploaded"))


def delete_removes_file_and_row_then_404():
    rid = _create(size=3, content_type="video/mp4")["recording"]["id"]
    _upload(rid, b"xyz")
    path = _stored_path(rid)
    eq(os.path.exists(path), True, "stored file before delete")
    eq(psql(f"SELECT stage, status FROM jobs WHERE recording_id = '{rid}'", db=r.db),
       "transcription|queued", "the upload queued the first stage")
    st, js, _, _ = r.request("DELETE", f"/api/recordings/{rid}", token=OTHER)
    assert_error(st, js, 403, "forbidden")
    st, _, _, raw = r.request("DELETE", f"/api/recordings/{rid}", token=OWNER)
    eq((st, raw), (204, b""))
    eq(os.path.exists(path), False, "stored file after delete")
    eq(psql(f"SELECT count(*) FROM recordings WHERE id = '{rid}'", db=r.db), "0")
    eq(psql(f"SELECT count(*) FROM jobs WHERE recording_id = '{rid}'", db=r.db), "0")
    eq(psql(f"SELECT count(*) FROM events WHERE recording_id = '{rid}' "
            "AND type = 'recording.deleted'", db=r.db), "1")
    for m, p in [("DELETE", f"/api/recordings/{rid}"), ("GET", f"/api/recordings/{rid}")]:
        st, js, _, _ = r.request(m, p, token=OWNER)
        assert_error(st, js, 404, "not_found")


def delete_of_an_upload_in_progress_removes_its_bytes():
    rid = _create(size=100, content_type="video/mp4")["recording"]["id"]
    h = dict(TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS})
    eq(r.request("PATCH", f"/api/uploads/{rid}", body=b"a" * 40, token=OWNER, headers=h)[0],
       204)
    part = os.path.join(r.tmp, "uploads", f"{rid}.part")
    eq(os.path.getsize(part), 40)
    eq(r.request("DELETE", f"/api/recordings/{rid}", token=ADMIN)[0], 204)
    eq(os.path.exists(part), False, "in-progress bytes removed")
    st, _, _, _ = r.request("HEAD", f"/api/uploads/{rid}", token=OWNER, headers=TUS)
    eq(st, 404)


def another_orgs_recording_is_404_on_every_route():
    rid = _create(token=OUTSIDER, size=4, content_type="video/mp4")["recording"]["id"]
    cases = [("GET", f"/api/recordings/{rid}", None, {}),
             ("PUT", f"/api/recordings/{rid}", {"title": "x"}, {}),
             ("POST", f"/api/recordings/{rid}/complete", None, {}),
             ("DELETE", f"/api/recordings/{rid}", None, {}),
             ("DELETE", f"/api/uploads/{rid}", None, TUS),
             ("PATCH", f"/api/uploads/{rid}", b"ab",
              dict(TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS}))]
    for tok in (OWNER, ADMIN):
        for m, p, body, h in cases:
            st, js, _, _ = r.request(m, p, body=body, token=tok, headers=h)
            try:
                assert_error(st, js, 404, "not_found")
            except AssertionError as e:
                raise AssertionError(f"{m} {p}: {e}") from None
        st, _, _, _ = r.request("HEAD", f"/api/uploads/{rid}", token=tok, headers=TUS)
        eq(st, 404, "HEAD")
    # untouched
    js = r.get(f"/api/recordings/{rid}", token=OUTSIDER)[1]
    eq((js["recording"]["title"] != "x", js["recording"]["status"]), (True, "uploading"))
    eq(psql(f"SELECT upload_offset FROM recordings WHERE id = '{rid}'", db=r.db), "0")


def non_uuid_ids_are_404():
    for m, p in [("GET", "/api/recordings/not-a-uuid"), ("PUT", "/api/recordings/123"),
                 ("POST", "/api/recordings/xyz/complete"), ("DELETE", "/api/recordings/1"),
                 ("GET", f"/api/recordings/{str(uuid.uuid4())[:-1]}g")]:
        body = {"title": "x"} if m == "PUT" else None
        st, js, _, _ = r.request(m, p, body=body, token=OWNER)
        try:
            assert_error(st, js, 404, "not_found")
        except AssertionError as e:
            raise AssertionError(f"{m} {p}: {e}") from None
    eq(r.get(f"/api/recordings/{uuid.uuid4()}", token=OWNER)[0], 404, "unknown uuid")


def routes_need_a_token_and_an_organization():
    st, js, _, _ = r.get("/api/recordings")
    assert_error(st, js, 401, "unauthenticated")
    st, js, _, _ = r.post("/api/recordings", {})
    assert_error(st, js, 401, "unauthenticated")
    lonely = r.token("rec-lonely")
    st, js, _, _ = r.post("/api/recordings", {}, token=lonely)
    assert_error(st, js, 403, "forbidden")


def every_change_updates_updated_at():
    rec = _create(title="t0")["recording"]
    time.sleep(0.01)
    js = r.request("PUT", f"/api/recordings/{rec['id']}", body={"title": "t1"}, token=OWNER)[1]
    if not js["recording"]["updated_at"] > rec["updated_at"]:
        raise AssertionError((rec["updated_at"], js["recording"]["updated_at"]))


if __name__ == "__main__":
    run_all(globals())
    r.stop()
    done()
