"""The pipeline end to end with the openai providers against the fake
OpenAI-compatible server (SPEC 8, issue 4): a walkthrough uploaded with
tus-js-client runs through every status to `completed`, with the fake's
transcript, a model-written document and the fake's embeddings, found by
/api/search and invisible to another organization; provider faults (429
with Retry-After, 500, garbage, a request that never answers) are retried
and the recording still completes; a permanent failure ends `error` with
its stage and message and the retry endpoint recovers it; a document that
fails for good still lets embedding run (search works) and the recording
ends `error` with error.stage "document", which regenerate then clears."""
import os
import shutil
import sys
import tempfile
import time

import sseutil
from harness import ROOT, Reeld, done, eq, psql, run_all
from pipeutil import statuses, upload_js
from tusutil import PIPELINE_ORDER, Org, public_env, speech_video

sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))
from fake_openai import FakeOpenAI  # noqa: E402

SENTENCE = "the quick brown fox jumps over the lazy dog."
TRANSCRIPT = ("Welcome to the quarterly planning walkthrough. Today we deploy the billing "
              "service to production and review the onboarding checklist for new hires.")
DIM = 256

fake = FakeOpenAI().start()
fake.defaults(transcript=TRANSCRIPT)
r = Reeld(env={"REELD_TRANSCRIBER": "openai", "REELD_LLM": "openai", "REELD_EMBEDDER": "openai",
               "OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": "sk-test",
               "REELD_EMBED_DIM": str(DIM), "REELD_JOB_BACKOFF_MS": "200",
               "REELD_JOB_MAX_ATTEMPTS": "3", "REELD_PROVIDER_TIMEOUT_S": "3"})
public_env(r)
r.start()
A = Org(r, "poa")
B = Org(r, "pob")
_tmp = tempfile.mkdtemp(prefix="reeld-pipe-oai-")
_video = speech_video(_tmp, SENTENCE, "walkthrough.mp4")
_state = {}


def _run(title, until=("completed", "error"), timeout=90):
    s = sseutil.Stream(r, A.owner)
    rid = upload_js(r, A.owner, _video, title)
    seen, last = statuses(s, rid, set(until), timeout=timeout)
    s.close()
    return rid, seen, last


def _detail(rid):
    st, js, _, _ = r.get(f"/api/recordings/{rid}?words=1", token=A.owner)
    eq(st, 200, "detail")
    return js


def walkthrough_completes_with_the_openai_providers():
    fake.reset()
    fake.defaults(transcript=TRANSCRIPT)
    rid, seen, last = _run("OpenAI walkthrough")
    _state["rid"] = rid
    eq(seen, PIPELINE_ORDER, "statuses on the stream")
    js = _detail(rid)
    t = js["transcript"]
    eq(t["text"], TRANSCRIPT, "transcript")
    prev = 0
    for w in t["words"]:
        if w["start_ms"] < prev or w["end_ms"] < w["start_ms"]:
            raise AssertionError(f"words not monotonic at {w}")
        prev = w["end_ms"]
    eq(len(t["words"]), len(TRANSCRIPT.split()), "words")
    d = js["document"]
    eq(d["model"], "gpt-5-nano", "document model")
    if not d["content"].startswith("# ") or not d["summary"]:
        raise AssertionError(f"document {d['content'][:200]!r} / {d['summary']!r}")
    n, dims = psql(f"SELECT count(*), min(dim) FROM transcript_chunks WHERE recording_id = "
                   f"'{rid}'", db=r.db).split("|")
    if int(n) < 1 or int(dims) != DIM:
        raise AssertionError(f"chunks {n} of dim {dims}")
    # what reeld sent
    tr = fake.requests(endpoint="transcriptions", bodies=True)[-1]["body"]
    eq((tr["model"], tr["response_format"], tr["timestamp_granularities[]"]),
       (["whisper-1"], ["verbose_json"], ["word"]), "transcription form")
    emb = fake.requests(endpoint="embeddings", bodies=True)[-1]["body"]
    eq(emb["dimensions"], DIM, "embedding dimensions")
    eq(emb["model"], "text-embedding-3-small", "embedding model")


def search_finds_it_and_other_orgs_do_not():
    st, js, _, _ = r.get("/api/search?q=deploy%20the%20billing%20service", token=A.owner)
    eq(st, 200, "search")
    if not js["matches"] or js["matches"][0]["recording_id"] != _state["rid"]:
        raise AssertionError(f"matches {js['matches']}")
    st, js, _, _ = r.get("/api/search?q=deploy%20the%20billing%20service", token=B.owner)
    eq(js["matches"], [], "org B")


def transient_faults_are_retried_and_it_completes():
    fake.reset()
    fake.defaults(transcript=TRANSCRIPT)
    fake.script({"transcriptions": [{"status": 429, "retry_after": 1}, {"status": 500},
                                    {"ok": True}],
                 "chat": [{"fault": "garbage"}, {"ok": True}],
                 "embeddings": [{"fault": "timeout"}, {"ok": True}]})
    t0 = time.time()
    rid, seen, last = _run("Flaky providers")
    eq(seen[-1], "completed", f"final status ({last['data']})")
    st = fake.stats()["requests"]
    if st.get("transcriptions", 0) < 3 or st.get("chat", 0) < 2 or st.get("embeddings", 0) < 2:
        raise AssertionError(f"fake saw {st}")
    # Retry-After: 1 s was honoured before the 500's retry
    if time.time() - t0 < 1.0:
        raise AssertionError("finished faster than the provider's Retry-After")
    # the embeddings timeout cost the job an attempt (the call's time limit)
    eq(psql(f"SELECT attempts FROM jobs WHERE recording_id = '{rid}' AND stage = 'embedding'",
            db=r.db), "2", "embedding attempts")
    # 429 and 500 are retried inside the call; on a loaded machine the
    # call's 3 s limit may run out first, and the job's retry finishes it
    att = psql(f"SELECT attempts FROM jobs WHERE recording_id = '{rid}' "
               f"AND stage = 'transcription'", db=r.db)
    if att not in ("1", "2"):
        raise AssertionError(f"transcription attempts {att}")


def permanent_failure_ends_error_and_retry_recovers():
    fake.reset()
    fake.defaults(transcript=TRANSCRIPT, error="insufficient_quota")
    rid, seen, last = _run("Out of quota")
    eq(seen[-1], "error", "final status")
    err = last["data"]["error"]
    eq(err["stage"], "transcription", "error.stage")
    if "quota" not in err["message"]:
        raise AssertionError(f"message {err}")
    eq(fake.stats()["requests"].get("transcriptions"), 1, "no retry of insufficient_quota")
    eq(psql(f"SELECT status FROM jobs WHERE recording_id = '{rid}'", db=r.db), "failed",
       "the job")
    fake.defaults(error=None)
    s = sseutil.Stream(r, A.owner, query=f"?recording_id={rid}")
    st, js, _, _ = r.post(f"/api/recordings/{rid}/retry", None, token=A.owner)
    eq(st, 202, "retry")
    seen, last = statuses(s, rid, {"completed", "error"}, timeout=90)
    s.close()
    eq(seen, PIPELINE_ORDER, "statuses after the retry")
    eq(_detail(rid)["recording"]["error"], None, "error cleared")


def failed_document_still_embeds_then_regenerate_clears_it():
    fake.reset()
    fake.defaults(transcript=TRANSCRIPT)
    # every chat model refuses the request for good (invalid_request_error)
    fake.script({"chat": [{"status": 400}] * 2})
    rid, seen, last = _run("No document")
    eq(seen, ["uploaded", "transcribing", "transcribed", "doc_generating", "embedding", "error"],
       "statuses")
    eq(last["data"]["error"]["stage"], "document", "error.stage")
    js = _detail(rid)
    eq(js["document"], None, "no document")
    eq(js["recording"]["error"]["stage"], "document", "detail error.stage")
    st, js, _, _ = r.get(f"/api/search?q=onboarding%20checklist&scope=recording:{rid}",
                         token=A.owner)
    eq(len(js["matches"]) >= 1, True, "search works without the document")
    s = sseutil.Stream(r, A.owner, query=f"?recording_id={rid}")
    st, js, _, _ = r.post(f"/api/recordings/{rid}/document/regenerate", {"model": "gpt-4o-mini"},
                          token=A.owner)
    eq(st, 202, "regenerate")
    seen, last = statuses(s, rid, {"completed", "error"}, timeout=60)
    s.close()
    eq(seen, ["doc_generating", "completed"], "statuses after regenerate")
    js = _detail(rid)
    eq(js["document"]["model"], "gpt-4o-mini", "the model asked for")
    eq(js["recording"]["error"], None, "error cleared")


def auto_publish_publishes_on_completion():
    fake.reset()
    fake.defaults(transcript=TRANSCRIPT)
    psql(f"UPDATE organizations SET settings = '{{\"auto_publish\": true}}' WHERE id = '{A.id}'",
         db=r.db)
    try:
        rid, seen, _ = _run("Published by itself")
    finally:
        psql(f"UPDATE organizations SET settings = '{{}}' WHERE id = '{A.id}'", db=r.db)
    eq(seen[-1], "completed", "final status")
    rec = _detail(rid)["recording"]
    eq(rec["published"], True, "published")
    st, js, _, _ = r.get("/share/" + rec["share_url"].rsplit("/", 1)[1],
                         headers={"Accept": "application/json"})
    eq(st, 200, "share page")


def sigterm_hands_a_running_stage_back_for_the_next_process():
    fake.reset()
    fake.defaults(transcript=TRANSCRIPT)
    fake.script({"transcriptions": [{"latency_ms": 20000}]})
    s = sseutil.Stream(r, A.owner)
    rid = upload_js(r, A.owner, _video, "Interrupted")
    statuses(s, rid, {"transcribing"}, timeout=30)
    s.close()
    fake.wait_for(lambda st: st["requests"].get("transcriptions", 0) >= 1)
    t0 = time.time()
    eq(r.stop(sig=15), 0, "exit status")
    if time.time() - t0 > 5:
        raise AssertionError("the stop waited for the stage")
    eq(psql(f"SELECT status || ' ' || attempts FROM jobs WHERE recording_id = '{rid}' "
            f"AND stage = 'transcription'", db=r.db), "queued 0", "the job, handed back")
    if not r.log_records("running jobs released for other workers"):
        raise AssertionError("no release logged")
    r.start()  # the lease (60 s by default) is not waited for
    deadline = time.time() + 30
    while time.time() < deadline:
        if psql(f"SELECT status FROM recordings WHERE id = '{rid}'", db=r.db) == "completed":
            return
        time.sleep(0.2)
    raise AssertionError("not completed after the restart")


run_all(globals())
r.stop()
fake.stop()
shutil.rmtree(_tmp, ignore_errors=True)
done()
