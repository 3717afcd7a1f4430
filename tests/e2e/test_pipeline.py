"""The pipeline end to end with the local providers (SPEC 8, issue 4): a
generated video (ffmpeg test pattern + synthesized speech) uploaded with
tus-js-client runs through every status, observed in order on the SSE
stream, to `completed`; the transcript's words have monotonic timestamps;
the document has a title and a summary; the chunks carry embeddings;
/api/search finds the recording by a phrase of its transcript and another
organization never sees it; the thumbnail is stored; retry and regenerate
answer as SPEC 7 says; media that cannot be decoded ends `error` with its
stage, and a delete removes the chunks from search.

Speech is synthesized with flite (tusutil.speech_video)."""
import os
import shutil
import tempfile
import time

import sseutil
from harness import Reeld, assert_error, done, eq, psql, run_all
from pipeutil import statuses, upload_js
from tusutil import PIPELINE_ORDER, Org, public_env, speech_video

SENTENCE = ("the quick brown fox jumps over the lazy dog. "
            "today we deploy the billing service to production.")
ORDER = PIPELINE_ORDER

r = Reeld(env={"REELD_JOB_BACKOFF_MS": "100", "REELD_JOB_MAX_ATTEMPTS": "2"})
public_env(r)
r.start()
A = Org(r, "pla")
B = Org(r, "plb")
_tmp = tempfile.mkdtemp(prefix="reeld-pipe-")
_state = {}


def walkthrough_runs_every_status_in_order():
    path = speech_video(_tmp, SENTENCE, "walkthrough.mp4")
    s = sseutil.Stream(r, A.owner)
    eq(s.status, 200, "SSE status")
    rid = upload_js(r, A.owner, path, "Walkthrough")
    seen, last = statuses(s, rid, {"completed", "error"})
    s.close()
    _state["rid"] = rid
    eq(seen, ORDER, "statuses on the stream")
    eq(last["data"]["error"], None, "error of the last event")


def transcript_words_are_monotonic():
    st, js, _, _ = r.get(f"/api/recordings/{_state['rid']}?words=1", token=A.owner)
    eq(st, 200, "detail")
    t = js["transcript"]
    words = t["words"]
    if len(words) < 8:
        raise AssertionError(f"too few words: {t['text']!r}")
    prev = 0
    for w in words:
        if w["start_ms"] < prev or w["end_ms"] < w["start_ms"]:
            raise AssertionError(f"not monotonic at {w}")
        prev = w["end_ms"]
    for want in ("fox", "billing", "production"):
        if want not in t["text"].split():
            raise AssertionError(f"{want!r} not in {t['text']!r}")
    eq(js["recording"]["status"], "completed", "status")
    if not js["recording"]["completed_at"]:
        raise AssertionError("completed_at not set")


def document_has_title_and_summary():
    st, js, _, _ = r.get(f"/api/recordings/{_state['rid']}", token=A.owner)
    d = js["document"]
    if not d["content"].startswith("# ") or len(d["content"].split("\n")[0]) < 4:
        raise AssertionError(f"no title line: {d['content'][:200]!r}")
    if not d["summary"]:
        raise AssertionError("empty summary")
    eq(d["model"], "local-extractive", "model")
    stages = {x["stage"]: x for x in js["stages"]}
    eq(sorted(stages), ["document", "embedding", "publication", "transcription"], "stages")
    for x in stages.values():
        eq(x["status"], "done", f"{x['stage']} status")
        if not x["started_at"] or not x["finished_at"]:
            raise AssertionError(f"no timings: {x}")


def chunks_carry_embeddings():
    rid = _state["rid"]
    n, ok = psql(f"SELECT count(*), bool_and(octet_length(embedding) = 4 * dim AND dim = 1536)"
                 f" FROM transcript_chunks WHERE recording_id = '{rid}'", db=r.db).split("|")
    if int(n) < 1 or ok != "t":
        raise AssertionError(f"chunks {n}, sizes ok {ok}")


def search_finds_the_recording_by_a_phrase():
    st, js, _, raw = r.get("/api/search?q=deploy%20the%20billing%20service", token=A.other)
    eq(st, 200, f"search ({raw[:200]!r})")
    m = js["matches"]
    if not m or m[0]["recording_id"] != _state["rid"]:
        raise AssertionError(f"matches {m}")
    eq(m[0]["title"], "Walkthrough", "title")
    if not (m[0]["score"] > 0.1 and "billing" in m[0]["snippet"]):
        raise AssertionError(f"match {m[0]}")
    if m[0]["end_ms"] < m[0]["start_ms"] or not m[0]["chunk_id"]:
        raise AssertionError(f"match {m[0]}")
    # scoped to the recording, and to another (unknown) one
    st, js, _, _ = r.get(f"/api/search?q=billing&scope=recording:{_state['rid']}",
                         token=A.owner)
    eq(len(js["matches"]) >= 1, True, "scoped matches")
    st, js, _, _ = r.get("/api/search?q=billing&scope=recording:"
                         "00000000-0000-4000-8000-000000000000", token=A.owner)
    eq(js["matches"], [], "other scope")


def other_org_never_sees_the_chunks():
    st, js, _, _ = r.get("/api/search?q=deploy%20the%20billing%20service", token=B.owner)
    eq(st, 200, "search")
    eq(js["matches"], [], "org B's matches")
    st, js, _, _ = r.get(f"/api/search?q=billing&scope=recording:{_state['rid']}",
                         token=B.owner)
    eq(js["matches"], [], "org B scoped to A's recording")


def search_rejects_bad_parameters():
    for q, why in [("", "no q"), ("?q=x&top_k=0", "top_k 0"), ("?q=x&top_k=51", "top_k 51"),
                   ("?q=x&scope=recording:nope", "bad scope"), ("?q=x&scope=bogus", "scope")]:
        st, js, _, _ = r.get(f"/api/search{q}", token=A.owner)
        assert_error(st, js, 422, "invalid_request")
    st, js, _, _ = r.get("/api/search?q=x")
    assert_error(st, js, 401, "unauthenticated")


def thumbnail_is_stored():
    key = psql(f"SELECT thumbnail_key FROM recordings WHERE id = '{_state['rid']}'", db=r.db)
    if not key.endswith(".jpg"):
        raise AssertionError(f"thumbnail_key {key!r}")
    path = os.path.join(r.tmp, "storage", key)
    if not os.path.exists(path):
        found = [os.path.join(d, f) for d, _, fs in os.walk(r.tmp) for f in fs
                 if f.endswith(".jpg")]
        if not found:
            raise AssertionError("no thumbnail file")
        path = found[0]
    with open(path, "rb") as f:
        eq(f.read(2), b"\xff\xd8", "JPEG magic")


def retry_refuses_a_completed_recording():
    st, js, _, _ = r.post(f"/api/recordings/{_state['rid']}/retry", {}, token=A.owner)
    assert_error(st, js, 409, "conflict")
    st, js, _, _ = r.post(f"/api/recordings/{_state['rid']}/retry", {"stage": "nope"},
                          token=A.owner)
    assert_error(st, js, 422, "invalid_request")
    st, js, _, _ = r.post(f"/api/recordings/{_state['rid']}/retry", {}, token=B.admin)
    assert_error(st, js, 404, "not_found")
    st, js, _, _ = r.post(f"/api/recordings/{_state['rid']}/retry", {}, token=A.other)
    assert_error(st, js, 403, "forbidden")


def regenerate_writes_the_document_again():
    rid = _state["rid"]
    before = psql(f"SELECT updated_at FROM documents WHERE recording_id = '{rid}'", db=r.db)
    s = sseutil.Stream(r, A.owner, query=f"?recording_id={rid}")
    st, js, _, raw = r.post(f"/api/recordings/{rid}/document/regenerate", None, token=A.owner)
    eq(st, 202, f"regenerate ({raw[:200]!r})")
    seen, _ = statuses(s, rid, {"completed", "error"}, timeout=60)
    s.close()
    eq(seen, ["doc_generating", "completed"], "statuses")
    after = psql(f"SELECT updated_at FROM documents WHERE recording_id = '{rid}'", db=r.db)
    if after == before:
        raise AssertionError("document not written again")
    eq(psql(f"SELECT count(*) FROM documents WHERE recording_id = '{rid}'", db=r.db), "1",
       "documents")


def undecodable_media_ends_error_and_retry_reruns_it():
    path = os.path.join(_tmp, "noise.mp4")
    with open(path, "wb") as f:
        f.write(os.urandom(50000))
    s = sseutil.Stream(r, A.owner)
    rid = upload_js(r, A.owner, path, "Noise")
    seen, last = statuses(s, rid, {"completed", "error"}, timeout=60)
    eq(seen[-1], "error", "final status")
    eq(last["data"]["error"]["stage"], "transcription", "error.stage")
    if "decode" not in last["data"]["error"]["message"]:
        raise AssertionError(f"message {last['data']['error']}")
    st, js, _, _ = r.get(f"/api/recordings/{rid}", token=A.owner)
    eq(js["recording"]["error"]["stage"], "transcription", "detail error.stage")
    # a later stage cannot run before the failed one
    st, js, _, _ = r.post(f"/api/recordings/{rid}/retry", {"stage": "embedding"},
                          token=A.owner)
    assert_error(st, js, 409, "conflict")
    st, js, _, _ = r.post(f"/api/recordings/{rid}/retry", None, token=A.owner)
    eq(st, 202, "retry")
    seen, last = statuses(s, rid, {"completed", "error"}, timeout=60)
    s.close()
    eq(seen, ["uploaded", "transcribing", "error"], "statuses after retry")
    eq(psql(f"SELECT count(*) FROM jobs WHERE recording_id = '{rid}'", db=r.db), "2",
       "jobs: the first and the retry")


def delete_removes_chunks_from_search():
    rid = _state["rid"]
    st, _, _, _ = r.request("DELETE", f"/api/recordings/{rid}", token=A.owner)
    eq(st, 204, "delete")
    deadline = time.time() + 10
    while time.time() < deadline:
        st, js, _, _ = r.get("/api/search?q=billing%20service", token=A.owner)
        if st == 200 and not any(m["recording_id"] == rid for m in js["matches"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"still found: {js}")


def metrics_show_the_stages():
    st, _, _, raw = r.get("/metrics")
    text = raw.decode()
    for want in ('reeld_jobs_total{stage="transcription",outcome="done"}',
                 'reeld_stage_duration_seconds_count{stage="publication"}',
                 "reeld_index_vectors"):
        if want not in text:
            raise AssertionError(f"{want} missing from /metrics")


run_all(globals())
r.stop()
shutil.rmtree(_tmp, ignore_errors=True)
done()
