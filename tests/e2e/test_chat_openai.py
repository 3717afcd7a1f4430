"""The assistant with the openai answerer against the fake OpenAI-compatible
server (SPEC 9, issue 5): the model's streamed tokens are relayed in order
(references, tokens, done with usage) and equal the model's text; a [1]
citation maps to the right recording and moment; failures before the
first token are retried and then answered 503 `unavailable`, a 429 then an
answer streams; a failure mid-stream ends the stream with an `error`
event; a client that leaves closes the upstream connection at once; a
client that stops reading pauses the upstream (reeld's memory stays
bounded) and gets the whole answer once it reads again; every exchange is
stored with its outcome and usage; with no relevant source no model is
asked."""
import os
import shutil
import sys
import tempfile
import time

from harness import ROOT, Reeld, done, eq, psql, run_all
from pipeutil import chat_ask, chat_read, chat_send, record_completed
from tusutil import Org, public_env, speech_video

sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))
from fake_openai import FakeOpenAI  # noqa: E402

# A walkthrough whose billing part comes late (its chunk starts well after
# 0), and another one about something else.
PLANNING = (("The office plants in the kitchen need water every monday morning. " * 25) +
            ("Today we deploy the billing service to production. The billing service deploy "
             "happens on friday after the review. " * 6))
ONBOARDING = "The onboarding checklist for new hires covers laptops, badges and accounts. " * 10
QUESTION = "when do we deploy the billing service?"
UNAVAILABLE = "Assistant is currently unavailable, try again"

fake = FakeOpenAI().start()
# Under ASan (make asan) freed memory waits in a quarantine, which would
# count every byte relayed as RSS: the stalled-client check measures the
# memory held, so the quarantine is off (no effect on a normal build).
_asan = (os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0").lstrip(":")
r = Reeld(env={"ASAN_OPTIONS": _asan, "REELD_TRANSCRIBER": "openai", "REELD_LLM": "openai", "REELD_EMBEDDER": "openai",
               "OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": "sk-test",
               "REELD_JOB_BACKOFF_MS": "200", "REELD_PROVIDER_TIMEOUT_S": "20",
               "REELD_CHAT_RATE": "1000/1s"})
public_env(r)
r.start()
A = Org(r, "coa")
_tmp = tempfile.mkdtemp(prefix="reeld-chat-oai-")
_rec = {}


def _fresh(**defaults):
    """The fake back to its start-up defaults, counters and records
    cleared, then these defaults."""
    fake.reset()
    if defaults:
        fake.defaults(**defaults)


def _chat_requests():
    return fake.stats(recent=0)["requests"].get("chat", 0)


def _last_chat_record():
    recs = [x for x in fake.stats(recent=50)["recent"] if x["endpoint"] == "chat"]
    if not recs:
        raise AssertionError("the fake saw no chat request")
    return recs[-1]


def _stored(mid, timeout=10):
    """outcome|prompt_tokens|completion_tokens|model of a stored exchange
    (waits for it: a cancelled exchange is stored after the client left)."""
    deadline = time.time() + timeout
    while True:
        row = psql(f"SELECT outcome, coalesce(prompt_tokens::text, 'null'), "
                   f"coalesce(completion_tokens::text, 'null'), coalesce(model, 'null') "
                   f"FROM chat_messages WHERE id = '{mid}'", db=r.db)
        if row or time.time() > deadline:
            return row
        time.sleep(0.05)


def _latest_stored(since_count, timeout=10):
    """The exchange stored after the first since_count ones, as
    (id, outcome, answer length)."""
    deadline = time.time() + timeout
    while True:
        n = int(psql("SELECT count(*) FROM chat_messages", db=r.db))
        if n > since_count or time.time() > deadline:
            break
        time.sleep(0.05)
    row = psql("SELECT id, outcome, length(answer) FROM chat_messages "
               "ORDER BY created_at DESC, id LIMIT 1", db=r.db)
    return row.split("|") if n > since_count else None


def _stored_count():
    return int(psql("SELECT count(*) FROM chat_messages", db=r.db))


def _kinds(events):
    return [e for e, _ in events]


def _read_until(s, marker, raw=b"", limit=1 << 20):
    """Reads from s until raw holds marker; returns raw."""
    while marker not in raw:
        b = s.recv(65536)
        if not b:
            raise AssertionError(f"connection closed before {marker!r}: {raw[-300:]!r}")
        raw += b
        if len(raw) > limit:
            raise AssertionError(f"no {marker!r} in {limit} bytes")
    return raw


def _rss_kib():
    with open(f"/proc/{r.proc.pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise AssertionError("no VmRSS")


def setup_records_two_walkthroughs():
    video = speech_video(_tmp, "the quick brown fox jumps over the lazy dog.", "w.mp4")
    for key, text, title in (("plan", PLANNING, "Planning walkthrough"),
                             ("onb", ONBOARDING, "Onboarding walkthrough")):
        _fresh(transcript=text, duration=300.0)
        _rec[key] = record_completed(r, A.owner, video, title)
    n = psql(f"SELECT count(*) FROM transcript_chunks WHERE recording_id = '{_rec['plan']}'",
             db=r.db)
    if int(n) < 2:
        raise AssertionError(f"the planning walkthrough has {n} chunks")


def tokens_are_relayed_in_order_and_cite_the_right_moment():
    text = "We deploy the billing service to production on friday, after the review [1]."
    _fresh(text=text)
    st, hdr, events = chat_ask(r, A.owner, {"query": QUESTION})
    eq(st, 200, "status")
    if not hdr.get("content-type", "").startswith("text/event-stream"):
        raise AssertionError(f"content-type {hdr.get('content-type')}")
    kinds = _kinds(events)
    if kinds[0] != "references" or kinds[-1] != "done" or set(kinds[1:-1]) != {"token"}:
        raise AssertionError(f"events {kinds}")
    tokens = [d["text"] for e, d in events if e == "token"]
    eq("".join(tokens), text, "the tokens put together")
    eq(len(tokens), len(text.split()), "one event per upstream token")
    d = events[-1][1]
    eq(d["answer"], text, "done.answer")
    eq(d["citations"], [1], "citations")
    eq(d["model"], "gpt-5-nano", "model")
    u = d["usage"]
    if not isinstance(u.get("prompt_tokens"), int) or u["prompt_tokens"] < 50 or \
            u.get("completion_tokens") != len(tokens):  # the fake's count: its pieces
        raise AssertionError(f"usage {u}")
    # [1] is the planning walkthrough, at the start of its billing chunk
    ref = events[0][1]["references"][0]
    eq(ref["recording_id"], _rec["plan"], "references[0]")
    eq(ref["title"], "Planning walkthrough", "references[0].title")
    start, ctext = psql(f"SELECT start_ms, text FROM transcript_chunks "
                        f"WHERE uid = '{ref['chunk_id']}'", db=r.db).split("|", 1)
    eq(ref["start_ms"], int(start), "references[0].start_ms is its chunk's start")
    if ref["start_ms"] <= 0 or "billing" not in ctext:
        raise AssertionError(f"cited chunk at {start} ms: {ctext[:120]!r}")
    # what the model was sent: the numbered sources, then the question
    body = fake.requests(endpoint="chat", bodies=True)[-1]["body"]
    eq((body["stream"], body["stream_options"]), (True, {"include_usage": True}), "stream")
    msgs = body["messages"]
    eq(msgs[0]["role"], "system", "first message")
    if '[1] "Planning walkthrough"' not in msgs[0]["content"] or \
            ctext[:60] not in msgs[0]["content"]:
        raise AssertionError(f"system prompt {msgs[0]['content'][:400]!r}")
    eq(msgs[-1], {"role": "user", "content": QUESTION}, "last message")
    eq(_stored(d["message_id"]), f"answered|{u['prompt_tokens']}|{u['completion_tokens']}"
       f"|gpt-5-nano", "stored exchange")
    eq(psql(f"SELECT answer = '{text}', jsonb_array_length(refs) > 0 FROM chat_messages "
            f"WHERE id = '{d['message_id']}'", db=r.db), "t|t", "stored answer and refs")


def json_answer_collects_the_stream():
    text = "The billing service goes out on friday [1]."
    _fresh(text=text)
    st, _, js = chat_ask(r, A.owner, {"query": QUESTION}, sse=False)
    eq(st, 200, "status")
    eq(js["answer"], text, "answer")
    eq(js["references"][0]["recording_id"], _rec["plan"], "references[0]")
    eq(js["citations"], [1], "citations")


def _all_attempts_fail(status):
    # chat only: the question's embedding comes from the fake too
    _fresh()
    fake.script([{"status": status}] * 20, endpoint="chat")
    before = _stored_count()
    st, hdr, js = chat_ask(r, A.owner, {"query": QUESTION})
    eq(st, 503, f"status after upstream {status}s")
    eq(js["error"]["code"], "unavailable", "error.code")
    eq(js["error"]["message"], UNAVAILABLE, "error.message")
    if not hdr.get("retry-after"):
        raise AssertionError(f"no Retry-After: {hdr}")
    n = _chat_requests()
    if n < 2:
        raise AssertionError(f"the fake saw {n} chat request(s): not retried")
    row = _latest_stored(before)
    if not row or row[1:] != ["error", "0"]:
        raise AssertionError(f"stored {row}")


def upstream_500s_are_retried_then_503():
    _all_attempts_fail(500)


def upstream_429s_are_retried_then_503():
    _all_attempts_fail(429)


def a_429_then_an_answer_streams():
    text = "Friday [1]."
    _fresh(text=text)
    fake.script([{"status": 429, "retry_after": 1}, {"ok": True}], endpoint="chat")
    t0 = time.time()
    st, _, events = chat_ask(r, A.owner, {"query": QUESTION})
    eq(st, 200, "status")
    eq(_kinds(events)[-1], "done", "last event")
    eq(events[-1][1]["answer"], text, "answer")
    eq(_chat_requests(), 2, "chat requests")
    if time.time() - t0 < 1.0:
        raise AssertionError("answered before the upstream's Retry-After")


def a_midstream_failure_ends_with_an_error_event():
    _fresh(text="one two three four five six seven eight nine ten [1].")
    fake.script([{"fault": "midstream_error", "fault_after": 3}], endpoint="chat")
    st, _, events = chat_ask(r, A.owner, {"query": QUESTION})
    eq(st, 200, "status")
    kinds = _kinds(events)
    eq(kinds, ["references", "token", "token", "token", "error"], "events")
    err = events[-1][1]
    eq((err["code"], err["message"]), ("unavailable", UNAVAILABLE), "error event")
    eq(_chat_requests(), 1, "chat requests (nothing is retried after the first token)")
    eq(_stored(err["message_id"]).split("|")[0], "error", "stored outcome")
    eq(psql(f"SELECT answer FROM chat_messages WHERE id = '{err['message_id']}'", db=r.db),
       "one two three", "stored partial answer")


def a_client_that_leaves_closes_the_upstream_within_a_second():
    _fresh(tokens=1000, token_delay_ms=50)
    before = _stored_count()
    s = chat_send(r, A.owner, {"query": QUESTION})
    _read_until(s, b"event: token")
    rec = _last_chat_record()
    if rec["completed"] or rec["closed_at"]:
        raise AssertionError(f"upstream already over: {rec}")
    s.close()
    t_close = time.time()
    st = fake.wait_for(lambda x: any(y["endpoint"] == "chat" and y["client_closed"]
                                     for y in x["recent"]), timeout=5)
    rec = [y for y in st["recent"] if y["endpoint"] == "chat"][-1]
    gap = rec["closed_at"] - t_close
    if gap > 1.0:
        raise AssertionError(f"the fake saw the close {gap:.3f} s after the client left")
    if rec["completed"] or rec["tokens_sent"] >= 1000:
        raise AssertionError(f"upstream finished: {rec}")
    row = _latest_stored(before)
    if not row or row[1] != "cancelled":
        raise AssertionError(f"stored {row}")


def a_client_that_stops_reading_pauses_the_upstream():
    # 200,000 short tokens: ~50 MB upstream (far more than the socket
    # buffers on the way hold) for a 600 KB answer (under the 1 MiB an
    # answer may reach)
    ntok = 200000
    text = " ".join(["go"] * ntok)
    _fresh(text=text)
    base = _rss_kib()
    s = chat_send(r, A.owner, {"query": QUESTION}, timeout=60, rcvbuf=32 * 1024)
    raw = _read_until(s, b"\r\n\r\n")
    if not raw.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"head {raw[:200]!r}")
    # the client reads nothing more: upstream must stop (its bytes stop
    # growing for 1.5 s, at least 3 s after the head) short of the end
    t0 = time.time()
    peak, last, since = base, None, time.time()
    while True:
        rec = _last_chat_record()
        peak = max(peak, _rss_kib())
        now = time.time()
        if last is None or rec["bytes_sent"] != last:
            last, since = rec["bytes_sent"], now
        if now - t0 >= 3 and now - since >= 1.5:
            break
        if rec["completed"] or now - t0 > 20:
            raise AssertionError(f"upstream not stopped while the client was not reading: {rec}")
        time.sleep(0.1)
    if not rec["paused"] or rec["tokens_sent"] >= ntok:
        raise AssertionError(f"upstream record {rec}")
    grew = (peak - base) / 1024
    if grew >= 16:
        raise AssertionError(f"reeld's RSS grew by {grew:.1f} MiB")
    print(f"# stalled at {rec['tokens_sent']} of {ntok} tokens, {rec['bytes_sent']} bytes; "
          f"RSS +{grew:.1f} MiB", file=sys.stderr, flush=True)
    _rec["stalled"] = (s, raw, text)


def the_stalled_client_reading_again_gets_the_whole_answer():
    if "stalled" not in _rec:
        raise AssertionError("no stalled stream: the check before failed")
    s, raw, text = _rec.pop("stalled")
    ntok = len(text.split())
    # every token, then done, which carries the whole answer (~600 KB)
    st, _, events = chat_read(s, raw=raw)
    eq(st, 200, "status")
    kinds = _kinds(events)
    if kinds[-1] != "done":
        raise AssertionError(f"the stream ended after {kinds.count('token')} of {ntok} tokens "
                             f"with {kinds[-1]!r}, without done")
    eq((kinds[0], len(kinds)), ("references", ntok + 2), "events")
    d = events[-1][1]
    eq("".join(x["text"] for e, x in events if e == "token"), text, "the tokens put together")
    eq(d["answer"], text, "done.answer")
    eq(d["usage"]["completion_tokens"], ntok, "completion_tokens")
    rec = _last_chat_record()
    if not rec["completed"] or rec["pauses"] < 1:
        raise AssertionError(f"upstream record {rec}")
    eq(_stored(d["message_id"]).split("|")[0], "answered", "stored outcome")


def nothing_relevant_asks_no_model():
    _fresh(text="should not be asked [1].")
    st, _, events = chat_ask(r, A.owner, {"query": "quantum chromodynamics lattice gauge"})
    eq(st, 200, "status")
    eq(events[0], ("references", {"references": []}), "no references")
    d = events[-1][1]
    if "could not find" not in d["answer"]:
        raise AssertionError(f"answer {d['answer']!r}")
    eq(_chat_requests(), 0, "chat requests")
    if fake.stats(recent=0)["requests"].get("embeddings", 0) < 1:
        raise AssertionError("the question was not embedded by the fake")
    eq(_stored(d["message_id"]), "no_context|null|null|null", "stored")


run_all(globals())
r.stop()
fake.stop()
shutil.rmtree(_tmp, ignore_errors=True)
done()
