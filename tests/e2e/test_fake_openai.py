"""The fake OpenAI provider (tests/fakes/fake_openai.py) against real
clients: every endpoint in OpenAI's wire format, scripted errors, each
fault, the control API's records (client closes, backpressure) and 1,000
concurrent streams. Later tests trust the fake because of these."""
import asyncio
import base64
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile

from harness import run_all, ROOT, done, eq

sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))
from fake_openai import FakeOpenAI  # noqa: E402

fake = FakeOpenAI().start()
AUTH = {"Authorization": "Bearer sk-test"}
TEXT = "  Hello,  world!\n\nA café ✓ line\twith tabs,  spaces and [1] a citation.  "


# ---------------------------------------------------------------------------
# A small HTTP/1.1 client on asyncio streams (content-length and chunked
# bodies), and a general SSE parser.

class _Resp:
    def __init__(self):
        self.status, self.headers, self.body, self.complete = 0, {}, b"", False

    def json(self):
        return json.loads(self.body)


async def _read_response(reader, stop=None, after_head=None):
    """Reads one response. stop(body_so_far) -> True ends reading early
    (the caller then closes); after_head() is awaited between the head and
    the body. complete says whether the body was whole."""
    r = _Resp()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    r.status = int(lines[0].split(" ")[1])
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            r.headers[k.strip().lower()] = v.strip()
    if after_head:
        await after_head()
    body = bytearray()
    try:
        if r.headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    r.complete = True
                    break
                body += (await reader.readexactly(size + 2))[:-2]
                if stop and stop(bytes(body)):
                    break
        else:
            body += await reader.readexactly(int(r.headers.get("content-length", "0")))
            r.complete = True
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    r.body = bytes(body)
    return r


def _request_bytes(method, path, body=None, headers=None):
    h = {"Host": "127.0.0.1", **AUTH, **(headers or {})}
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    if body is not None:
        h["Content-Length"] = str(len(body))
    return ("".join([f"{method} {path} HTTP/1.1\r\n"] + [f"{k}: {v}\r\n" for k, v in h.items()
                                                         if v is not None]) +
            "\r\n").encode("latin-1") + (body or b"")


async def _afetch(method, path, body=None, headers=None, stop=None, port=None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port or fake.port)
    try:
        writer.write(_request_bytes(method, path, body, headers))
        await writer.drain()
        return await _read_response(reader, stop)
    finally:
        writer.close()


def _fetch(method, path, body=None, headers=None, stop=None, timeout=30, port=None):
    return asyncio.run(asyncio.wait_for(_afetch(method, path, body, headers, stop, port),
                                        timeout))


def _chat(body, **kw):
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi there"}], **body}
    return _fetch("POST", "/v1/chat/completions", body, **kw)


def _sse_events(raw):
    """Events of an SSE body per the WHATWG algorithm: any of CRLF, LF, CR
    ends a line; comments skipped; data lines joined with LF; an event is
    dispatched by a blank line."""
    out, data = [], []
    for line in re.split(r"\r\n|\r|\n", raw.decode("utf-8")):
        if line == "":
            if data:
                out.append("\n".join(data))
            data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
    return out


def _stream_text(events):
    text = ""
    for e in events:
        if e == "[DONE]":
            break
        obj = json.loads(e)
        for c in obj.get("choices", []):
            text += c["delta"].get("content") or ""
    return text


def _err(resp, status, typ, code):
    eq(resp.status, status, "status")
    e = resp.json()["error"]
    eq(sorted(e), ["code", "message", "param", "type"], "error keys")
    eq(e["type"], typ, "error.type")
    eq(e["code"], code, "error.code")
    if not e["message"]:
        raise AssertionError("empty error message")


def _wav(seconds, rate=16000):
    n = int(seconds * rate)
    data = b"\x00\x00" * n
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" +
            struct.pack("<I", len(data)) + data)


def _multipart(fields, file_bytes, filename="audio.wav"):
    b = "fakeboundary7MA4YWxk"
    parts = []
    for k, v in fields:
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
                 f'\r\nContent-Type: audio/wav\r\n\r\n'.encode() + file_bytes + b"\r\n")
    parts.append(f"--{b}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={b}"


def _transcribe(fields, audio):
    body, ctype = _multipart(fields, audio)
    return _fetch("POST", "/v1/audio/transcriptions", body, {"Content-Type": ctype})


def _record(rid):
    return [r for r in fake.requests() if r["id"] == rid][0]


def _last_id():
    return fake.requests()[-1]["id"]


# ---------------------------------------------------------------------------
# Endpoints and formats.

def missing_bearer_token_is_401_in_openai_shape_and_any_token_passes():
    fake.reset()
    _err(_chat({}, headers={"Authorization": None}), 401, "invalid_request_error", None)
    eq(_chat({}, headers={"Authorization": "Bearer anything-goes"}).status, 200)


def api_key_flag_rejects_other_keys_and_no_auth_flag_needs_none():
    strict = FakeOpenAI("--api-key", "sk-right").start()
    open_ = FakeOpenAI("--no-auth").start()
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        _err(_fetch("POST", "/v1/chat/completions", body, {"Authorization": "Bearer sk-wrong"},
                    port=strict.port), 401, "invalid_request_error", "invalid_api_key")
        eq(_fetch("POST", "/v1/chat/completions", body, {"Authorization": "Bearer sk-right"},
                  port=strict.port).status, 200)
        eq(_fetch("POST", "/v1/chat/completions", body, {"Authorization": None},
                  port=open_.port).status, 200)
    finally:
        eq(strict.stop(), 0, "exit status")
        eq(open_.stop(), 0, "exit status")


def chat_json_answer_has_openai_shape_and_exact_text():
    fake.reset()
    fake.defaults(text=TEXT)
    r = _chat({})
    eq(r.status, 200)
    eq(r.headers["content-type"], "application/json")
    js = r.json()
    eq(js["object"], "chat.completion")
    eq(js["model"], "gpt-test")
    if not js["id"].startswith("chatcmpl-") or not isinstance(js["created"], int):
        raise AssertionError(f"id/created: {js}")
    ch = js["choices"][0]
    eq((ch["index"], ch["message"]["role"], ch["message"]["content"], ch["finish_reason"]),
       (0, "assistant", TEXT, "stop"))
    u = js["usage"]
    eq(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"], "usage total")
    if u["prompt_tokens"] <= 0 or u["completion_tokens"] <= 0:
        raise AssertionError(f"usage {u}")


def chat_stream_concatenates_to_text_then_finish_usage_and_done():
    fake.reset()
    fake.defaults(text=TEXT)
    r = _chat({"stream": True, "stream_options": {"include_usage": True}})
    eq(r.status, 200)
    eq(r.headers["content-type"], "text/event-stream; charset=utf-8")
    eq(r.headers["transfer-encoding"], "chunked")
    if not r.complete:
        raise AssertionError("stream not terminated")
    if not r.body.endswith(b"data: [DONE]\n\n") or b"\r" in r.body:
        raise AssertionError(f"framing: {r.body[-60:]!r}")
    ev = _sse_events(r.body)
    eq(ev[-1], "[DONE]")
    objs = [json.loads(e) for e in ev[:-1]]
    for o in objs:
        eq(o["object"], "chat.completion.chunk")
        eq(o["model"], "gpt-test")
        eq("usage" in o, True, "usage key present in every chunk when include_usage")
    eq(objs[0]["choices"][0]["delta"]["role"], "assistant")
    eq(_stream_text(ev), TEXT, "concatenated tokens")
    if len(objs) < 10:
        raise AssertionError("text was not split into tokens")
    fin = objs[-2]
    eq((fin["choices"][0]["delta"], fin["choices"][0]["finish_reason"]), ({}, "stop"))
    usage = objs[-1]
    eq(usage["choices"], [], "usage chunk choices")
    u = usage["usage"]
    eq(u["completion_tokens"], len(objs) - 3, "completion tokens = content chunks")
    eq(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"])
    for o in objs[:-1]:
        eq(o["usage"], None, "usage null before the usage chunk")


def chat_stream_without_include_usage_has_no_usage_chunk():
    fake.reset()
    fake.defaults(text="one two three")
    ev = _sse_events(_chat({"stream": True}).body)
    objs = [json.loads(e) for e in ev[:-1]]
    eq(ev[-1], "[DONE]")
    eq(any("usage" in o for o in objs), False, "usage key")
    eq(objs[-1]["choices"][0]["finish_reason"], "stop")
    eq(_stream_text(ev), "one two three")


def sse_framing_options_crlf_keepalive_nospace_multiline_parse_to_same_text():
    fake.reset()
    fake.defaults(text=TEXT, sse_crlf=True, sse_keepalive=2, sse_nospace=True, sse_multiline=True)
    r = _chat({"stream": True, "stream_options": {"include_usage": True}})
    raw = r.body
    if b"\r\n\r\n" not in raw or re.search(rb"[^\r]\n", raw):
        raise AssertionError("lines are not CRLF-terminated")
    if not raw.startswith(b": keep-alive\r\n") or raw.count(b": keep-alive") < 3:
        raise AssertionError("keep-alive comments missing")
    if b"data: {" in raw or b"data:{" not in raw:
        raise AssertionError("'data: ' with a space despite sse_nospace")
    ev = _sse_events(raw)
    if raw.count(b"data:") <= 3 * len(ev):
        raise AssertionError("events not split over several data: lines")
    eq(_stream_text(ev), TEXT)
    eq(ev[-1], "[DONE]")
    eq(json.loads(ev[-2])["choices"], [], "usage chunk survives multiline framing")


def tokens_setting_streams_that_many_and_max_tokens_truncates_with_length():
    fake.reset()
    fake.defaults(tokens=25)
    ev = _sse_events(_chat({"stream": True}).body)
    eq(len(ev), 25 + 3, "role + 25 tokens + finish + [DONE]")
    ev = _sse_events(_chat({"stream": True, "max_tokens": 5}).body)
    eq(len(ev), 5 + 3)
    eq(json.loads(ev[-2])["choices"][0]["finish_reason"], "length")
    js = _chat({"max_completion_tokens": 4}).json()
    eq(js["choices"][0]["finish_reason"], "length")
    eq(len(js["choices"][0]["message"]["content"].split()), 4)


def latency_delays_the_first_byte_and_stamped_tokens_carry_send_times():
    fake.reset()
    fake.script([{"latency_ms": 300, "tokens": 5, "stamp": True}])
    r = _chat({"stream": True})
    rec = _record(_last_id())
    if rec["first_byte_at"] - rec["started_at"] < 0.299:
        raise AssertionError(f"first byte before the latency: {rec}")
    stamps = [float(t) for t in _stream_text(_sse_events(r.body)).split()]
    eq(len(stamps), 5)
    if stamps != sorted(stamps) or not rec["started_at"] <= stamps[0] <= rec["finished_at"]:
        raise AssertionError(f"stamps {stamps} vs {rec}")


def default_answer_is_a_markdown_document_citing_numbered_sources():
    fake.reset()
    prompt = "Sources:\n[1] the deploy happens on fridays\n[2] backups run nightly\n" \
             "Question: when do deployments happen and how are backups handled?"
    js = _chat({"messages": [{"role": "system", "content": "Cite as [n]."},
                             {"role": "user", "content": prompt}]}).json()
    text = js["choices"][0]["message"]["content"]
    if not text.startswith("# ") or "## Summary" not in text or "[1]" not in text:
        raise AssertionError(f"not a cited document: {text!r}")
    eq(_chat({"messages": [{"role": "user", "content": prompt}]}).json()["choices"][0]
       ["message"]["content"], text, "deterministic")


def embeddings_are_deterministic_unit_vectors_for_string_and_array_inputs():
    fake.reset()
    r = _fetch("POST", "/v1/embeddings", {"model": "text-embedding-3-small",
                                          "input": "the release plan"})
    js = r.json()
    eq((js["object"], js["model"], len(js["data"])), ("list", "text-embedding-3-small", 1))
    d = js["data"][0]
    eq((d["object"], d["index"], len(d["embedding"])), ("embedding", 0, 1536))
    eq(round(math.sqrt(sum(x * x for x in d["embedding"])), 5), 1.0, "L2 norm")
    eq(sorted(js["usage"]), ["prompt_tokens", "total_tokens"])
    inputs = ["the release plan", "release plan for the team", "zebra quantum"]
    js2 = _fetch("POST", "/v1/embeddings", {"model": "e", "input": inputs,
                                            "dimensions": 256}).json()
    eq([x["index"] for x in js2["data"]], [0, 1, 2])
    vecs = [x["embedding"] for x in js2["data"]]
    eq({len(v) for v in vecs}, {256}, "dimensions honoured")
    again = _fetch("POST", "/v1/embeddings", {"model": "e", "input": inputs[0],
                                              "dimensions": 256}).json()
    eq(again["data"][0]["embedding"], vecs[0], "same text, same vector")

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b))
    if not cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]):
        raise AssertionError("texts sharing words are not closer")
    b64 = _fetch("POST", "/v1/embeddings", {"model": "e", "input": inputs[0], "dimensions": 256,
                                            "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    eq(list(struct.unpack("<256f", raw)), vecs[0], "base64 float32 = float list")


def embeddings_over_max_inputs_or_tokens_are_400():
    fake.reset()
    r = _fetch("POST", "/v1/embeddings", {"model": "e", "input": ["x"] * 2049})
    _err(r, 400, "invalid_request_error", "array_above_max_length")
    eq(_fetch("POST", "/v1/embeddings", {"model": "e", "input": ["x"] * 2048,
                                         "dimensions": 8}).status, 200)
    fake.defaults(embed_max_tokens=10)
    r = _fetch("POST", "/v1/embeddings", {"model": "e", "input": ["a " * 11]})
    _err(r, 400, "invalid_request_error", None)
    _err(_fetch("POST", "/v1/embeddings", {"model": "e", "input": []}), 400,
         "invalid_request_error", None)


def transcription_verbose_json_has_monotonic_word_timestamps_and_wav_duration():
    fake.reset()
    fields = [("model", "whisper-1"), ("response_format", "verbose_json"),
              ("timestamp_granularities[]", "word")]
    js = _transcribe(fields, _wav(4.0)).json()
    eq(js["duration"], 4.0, "duration from the WAV header")
    eq(js["language"], "english")
    words = js["words"]
    if len(words) < 5:
        raise AssertionError(f"too few words: {js}")
    prev = 0.0
    for w in words:
        if not (prev <= w["start"] <= w["end"] <= js["duration"]):
            raise AssertionError(f"not monotonic at {w}")
        prev = w["end"]
    eq(" ".join(w["word"] for w in words), re.sub(r"[.]", "", js["text"]), "words = text")
    if not js["segments"] or js["segments"][0]["start"] != 0.0:
        raise AssertionError("segments missing")
    eq(_transcribe(fields, _wav(4.0)).json(), js, "deterministic")
    other = _transcribe(fields, _wav(6.0)).json()
    if other["text"] == js["text"]:
        raise AssertionError("text does not depend on the file")


def transcription_script_text_and_formats_json_text_and_upload_limit():
    fake.reset()
    fake.script([{"transcript": "hello from the script"}], endpoint="transcriptions")
    js = _transcribe([("model", "whisper-1"), ("response_format", "verbose_json"),
                      ("timestamp_granularities[]", "word")], _wav(2.0)).json()
    eq(js["text"], "hello from the script")
    eq([w["word"] for w in js["words"]], ["hello", "from", "the", "script"])
    r = _transcribe([("model", "whisper-1")], _wav(1.0))
    eq(sorted(r.json()), ["text"], "json format")
    r = _transcribe([("model", "whisper-1"), ("response_format", "text")], _wav(1.0))
    eq(r.headers["content-type"].startswith("text/plain"), True)
    fake.defaults(max_upload_bytes=1000)
    eq(_transcribe([("model", "whisper-1")], _wav(1.0)).status, 413)
    _err(_transcribe([("response_format", "json")], _wav(1.0)), 400, "invalid_request_error",
         "missing_required_parameter")


def models_lists_known_models_and_unknown_path_is_404_in_openai_shape():
    fake.reset()
    js = _fetch("GET", "/v1/models").json()
    eq(js["object"], "list")
    _err(_fetch("POST", "/v1/nope", {}), 404, "invalid_request_error", None)
    _err(_fetch("GET", "/v1/chat/completions"), 404, "invalid_request_error", None)


def malformed_json_and_missing_fields_are_400():
    fake.reset()
    _err(_fetch("POST", "/v1/chat/completions", b"{not json",
                {"Content-Type": "application/json"}), 400, "invalid_request_error", None)
    _err(_fetch("POST", "/v1/chat/completions", {"model": "m"}), 400, "invalid_request_error",
         "missing_required_parameter")


# ---------------------------------------------------------------------------
# Scripts and errors.

def scripted_429_with_retry_after_then_500_then_ok_in_order():
    fake.reset()
    q = fake.script([{"status": 429, "retry_after": 1.5}, {"status": 500}, {"ok": True}],
                    endpoint="chat")
    eq(q["queued"], {"chat": 3})
    r = _chat({})
    _err(r, 429, "requests", "rate_limit_exceeded")
    eq((r.headers["retry-after"], r.headers["retry-after-ms"]), ("2", "1500"))
    _err(_chat({}), 500, "server_error", None)
    eq(_chat({}).status, 200)
    eq(fake.stats()["queued"], {}, "script consumed")


def insufficient_quota_is_429_with_its_own_type_and_code():
    fake.reset()
    fake.script([{"error": "insufficient_quota"}])
    _err(_fetch("POST", "/v1/embeddings", {"model": "e", "input": "x"}), 429,
         "insufficient_quota", "insufficient_quota")


def scripts_are_per_endpoint_and_the_star_queue_serves_any():
    fake.reset()
    fake.script({"embeddings": [{"status": 503}], "*": [{"status": 502}]})
    eq(_chat({}).status, 502, "chat takes from *")
    eq(_chat({}).status, 200, "* queue consumed")
    eq(_fetch("POST", "/v1/embeddings", {"model": "e", "input": "x"}).status, 503)


def per_model_defaults_fail_only_that_model_and_context_limit_is_enforced():
    fake.reset()
    fake.control("POST", "defaults", {"per_model": {"primary": {"status": 500}}})
    eq(_chat({"model": "primary"}).status, 500)
    eq(_chat({"model": "fallback"}).status, 200)
    fake.reset()
    fake.defaults(context_tokens=20)
    long = " ".join(["word"] * 50)
    _err(_chat({"messages": [{"role": "user", "content": long}]}), 400,
         "invalid_request_error", "context_length_exceeded")
    eq(_chat({}).status, 200)


def control_rejects_unknown_fields_and_faults():
    fake.reset()
    for bad in ([{"latency": 5}], [{"fault": "explode"}], {"nowhere": []}, [{"status": "x"}]):
        try:
            fake.script(bad)
        except RuntimeError as e:
            if "400" not in str(e):
                raise
        else:
            raise AssertionError(f"accepted {bad}")


def reset_clears_counters_records_scripts_and_defaults():
    fake.defaults(text="x")
    fake.script([{"status": 500}])
    _fetch("GET", "/v1/models")
    fake.reset()
    s = fake.stats()
    eq((s["requests"]["total"], s["queued"], s["recent"]), (0, {}, []))
    eq(fake.control("GET", "defaults")["text"], None)


# ---------------------------------------------------------------------------
# Faults.

def timeout_fault_never_answers_and_the_client_close_is_recorded():
    fake.reset()
    fake.script([{"fault": "timeout"}])
    try:
        _chat({"stream": True}, timeout=1.0)
    except asyncio.TimeoutError:
        pass
    else:
        raise AssertionError("the fake answered")
    s = fake.wait_for(lambda s: s["recent"] and s["recent"][-1]["client_closed"])
    rec = s["recent"][-1]
    eq((rec["fault"], rec["bytes_sent"], rec["completed"]), ("timeout", 0, False))
    eq(s["client_closed_early"], 1)


def drip_fault_sends_the_same_answer_in_small_pieces():
    fake.reset()
    fake.script([{"fault": "drip", "drip_bytes": 7, "drip_delay_ms": 20, "text": "drip drop"}])
    s = socket.create_connection(("127.0.0.1", fake.port), timeout=30)
    s.sendall(_request_bytes("POST", "/v1/chat/completions",
                             {"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "stream": True}, {"Connection": "close"}))
    reads, raw = 0, b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        reads += 1
        raw += b
    s.close()
    if reads < 2:
        raise AssertionError("answer arrived in one piece")
    body = raw.split(b"\r\n\r\n", 1)[1]
    dechunked = b""
    while body:
        size_s, rest = body.split(b"\r\n", 1)
        size = int(size_s, 16)
        dechunked += rest[:size]
        body = rest[size + 2:]
        if size == 0:
            break
    eq(_stream_text(_sse_events(dechunked)), "drip drop")


def garbage_fault_gives_unparseable_json_body_and_malformed_sse_event():
    fake.reset()
    fake.script([{"fault": "garbage"}, {"fault": "garbage", "fault_after": 2}])
    r = _chat({})
    eq((r.status, r.headers["content-type"]), (200, "application/json"))
    try:
        r.json()
    except ValueError:
        pass
    else:
        raise AssertionError("garbage body parsed")
    ev = _sse_events(_chat({"stream": True}).body)
    bad = [e for e in ev if e != "[DONE]" and not _parses(e)]
    eq(len(bad), 1, "one malformed event")
    eq(ev.index(bad[0]), 3, "after role chunk + 2 tokens")


def _parses(s):
    try:
        json.loads(s)
        return True
    except ValueError:
        return False


def midstream_error_fault_sends_an_error_event_after_n_tokens_and_no_done():
    fake.reset()
    fake.script([{"fault": "midstream_error", "fault_after": 4, "tokens": 10}])
    r = _chat({"stream": True})
    ev = _sse_events(r.body)
    eq(len(ev), 1 + 4 + 1, "role chunk, 4 tokens, error")
    err = json.loads(ev[-1])["error"]
    eq((err["type"], err["code"]), ("server_error", None))
    eq("[DONE]" in ev, False)
    rec = _record(_last_id())
    eq((rec["tokens_sent"], rec["server_closed"]), (4, True))


def disconnect_fault_cuts_stream_and_json_body():
    fake.reset()
    fake.script([{"fault": "disconnect", "fault_after": 2, "tokens": 10},
                 {"fault": "disconnect"}])
    r = _chat({"stream": True})
    eq(r.complete, False, "stream ended without the final chunk")
    eq(len(_sse_events(r.body)), 3)
    r = _chat({})
    eq(r.complete, False, "JSON body shorter than its content-length")
    eq(fake.stats()["server_closed"], 2)


# ---------------------------------------------------------------------------
# Connections: close, backpressure, keep-alive, real clients, scale.

def client_close_mid_stream_is_recorded_with_time_and_stats():
    fake.reset()
    fake.defaults(tokens=5000, token_delay_ms=10)

    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
        writer.write(_request_bytes("POST", "/v1/chat/completions",
                                    {"model": "m", "stream": True,
                                     "messages": [{"role": "user", "content": "x"}]}))
        await _read_response(reader, stop=lambda b: b.count(b"\n\n") >= 4)
        writer.close()
    asyncio.run(asyncio.wait_for(go(), 30))
    s = fake.wait_for(lambda s: s["recent"] and s["recent"][-1]["closed_at"] is not None)
    rec = s["recent"][-1]
    eq((rec["client_closed"], rec["completed"], rec["server_closed"]), (True, False, False))
    if not rec["started_at"] <= rec["closed_at"] <= s["now"]:
        raise AssertionError(f"closed_at out of range: {rec}")
    if not 3 <= rec["tokens_sent"] < 5000:
        raise AssertionError(f"tokens_sent {rec['tokens_sent']}")
    s = fake.wait_for(lambda s: s["streams_active"] == 0 and s["in_flight"] == 0)
    eq(s["client_closed_early"], 1)


def stalled_reader_pauses_the_stream_and_it_resumes_when_read():
    fake.reset()
    n = 100000
    fake.defaults(tokens=n)

    async def go():
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", fake.port, limit=1 << 16)
        writer.transport.pause_reading()
        writer.write(_request_bytes("POST", "/v1/chat/completions",
                                    {"model": "m", "stream": True,
                                     "messages": [{"role": "user", "content": "x"}]}))
        await writer.drain()
        s = await asyncio.to_thread(fake.wait_for,
                                    lambda s: s["streams_paused"] == 1, 20)
        rec = s["recent"][-1]
        if not rec["paused"] or rec["pauses"] < 1 or rec["tokens_sent"] >= n:
            raise AssertionError(f"record while stalled: {rec}")
        writer.transport.resume_reading()
        r = await _read_response(reader)
        writer.close()
        return r
    r = asyncio.run(asyncio.wait_for(go(), 60))
    eq(r.complete, True)
    eq(len(_sse_events(r.body)), n + 3)
    s = fake.wait_for(lambda s: s["streams_active"] == 0)
    eq((s["streams_paused"], s["streams_completed"]), (0, 1))
    if s["streams_paused_peak"] < 1:
        raise AssertionError("peak not recorded")


def keep_alive_pipelining_expect_continue_and_chunked_request_bodies():
    fake.reset()
    fake.defaults(text="ok then")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 10]), body[i:i + 10])
                       for i in range(0, len(body), 10)) + b"0\r\n\r\n"

    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
        # Two pipelined requests, then one with a chunked body.
        writer.write(_request_bytes("POST", "/v1/chat/completions", body) +
                     _request_bytes("POST", "/v1/chat/completions", body,
                                    {"Content-Type": "application/json"}))
        r1 = await _read_response(reader)
        r2 = await _read_response(reader)
        h = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n")
        writer.write(h + chunked)
        r3 = await _read_response(reader)
        # Expect: 100-continue: the interim answer comes before the body is sent.
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                     b"Bearer k\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                     % len(body))
        interim = await reader.readuntil(b"\r\n\r\n")
        writer.write(body)
        r4 = await _read_response(reader)
        writer.close()
        return r1, r2, r3, r4, interim
    r1, r2, r3, r4, interim = asyncio.run(asyncio.wait_for(go(), 30))
    eq(interim, b"HTTP/1.1 100 Continue\r\n\r\n")
    for r in (r1, r2, r3, r4):
        eq(r.json()["choices"][0]["message"]["content"], "ok then")
    eq(fake.stats()["connections_total"] >= 1, True)
    eq(len({r["id"] for r in fake.requests()}), 4)


def curl_streams_chat_and_uploads_multipart_with_word_timestamps():
    if not shutil.which("curl"):
        raise AssertionError("curl is not installed (scripts/deps.sh installs it)")
    fake.reset()
    fake.defaults(text=TEXT, token_delay_ms=1)
    out = subprocess.run(
        ["curl", "-sS", "-N", "-H", "Authorization: Bearer k", "-H",
         "Content-Type: application/json", f"{fake.url}/chat/completions", "-d",
         json.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True},
                     "messages": [{"role": "user", "content": "x"}]})],
        capture_output=True, timeout=30, check=True)
    eq(_stream_text(_sse_events(out.stdout)), TEXT)
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        f.write(_wav(30.0))  # ~1 MB: curl sends Expect: 100-continue
        f.flush()
        out = subprocess.run(
            ["curl", "-sS", "-H", "Authorization: Bearer k", f"{fake.url}/audio/transcriptions",
             "-F", f"file=@{f.name}", "-F", "model=whisper-1", "-F",
             "response_format=verbose_json", "-F", "timestamp_granularities[]=word"],
            capture_output=True, timeout=30, check=True)
    js = json.loads(out.stdout)
    eq(js["duration"], 30.0)
    eq(len(js["words"]), 75, "2.5 words a second")


def thousand_concurrent_streams_all_complete():
    fake.reset()
    fake.defaults(text=TEXT, token_delay_ms=20)
    n = 1000
    want = _stream_text(_sse_events(_chat({"stream": True}).body))

    async def go():
        sem = asyncio.Semaphore(200)  # paces the connects, not the streams
        started, all_started = 0, asyncio.Event()
        open_at_barrier = []

        async def barrier():
            # Every client holds its stream open until all n have their
            # answer head: n streams are then open at once on the fake.
            nonlocal started
            started += 1
            if started == n:
                s = await asyncio.to_thread(fake.stats, 0)
                open_at_barrier.append(s["connections_open"])
                all_started.set()
            await all_started.wait()

        async def one():
            async with sem:
                reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
            try:
                writer.write(_request_bytes("POST", "/v1/chat/completions",
                                            {"model": "m", "stream": True,
                                             "stream_options": {"include_usage": True},
                                             "messages": [{"role": "user", "content": "x"}]}))
                r = await _read_response(reader, after_head=barrier)
                return r.complete and _stream_text(_sse_events(r.body)) == want
            finally:
                writer.close()
        res = await asyncio.gather(*(one() for _ in range(n)))
        return res, open_at_barrier[0]
    res, open_conns = asyncio.run(asyncio.wait_for(go(), 60))
    eq(sum(res), n, "complete streams with the right text")
    if open_conns < n:
        raise AssertionError(f"only {open_conns} connections open at once")
    s = fake.wait_for(lambda s: s["streams_active"] == 0)
    eq((s["streams_completed"], s["requests"]["chat"]), (n + 1, n + 1))


def sigterm_stops_the_fake_with_status_0():
    eq(fake.stop(), 0)


def _raise_fd_limit():
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


_raise_fd_limit()
try:
    run_all(globals())
finally:
    fake.stop()
    sys.stderr.write(fake.stderr()[-4000:])
done()
