#!/usr/bin/env python3
"""fake_openai: a fake OpenAI-compatible provider for reeld's tests and benches.

A real HTTP/1.1 server on loopback (asyncio streams, Python standard library
only) speaking the OpenAI wire formats: chat completions (JSON, and streamed
chunks over SSE with the usage chunk and [DONE]), embeddings, and audio
transcriptions (multipart upload, verbose_json with word timestamps), with
errors in OpenAI's shape. What each request gets is scripted through a
control API under /_control/, and every request is recorded, so a test can
check what reeld sent, whether a stream was paused by backpressure and when
the client closed its connection. README.md beside this file is the manual.

    python3 tests/fakes/fake_openai.py --port 0 --host 127.0.0.1

prints "fake_openai listening on HOST:PORT" once ready and serves until
SIGTERM or SIGINT (exit status 0). Python tests can drive it through the
FakeOpenAI class at the end of this file.

Layout: behaviours (the declarative field table, error presets) -> text,
embedding and transcript generators -> state (scripts, stats, records) ->
HTTP reading (Conn) and writing (Responder, Sse) -> provider handlers ->
control handlers -> the server -> the test-side helper.
"""

import argparse
import array
import asyncio
import base64
import collections
import contextlib
import email.utils
import functools
import hashlib
import http
import json
import math
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

# ---------------------------------------------------------------------------
# Behaviours: what one request gets. Defaults come from the command line and
# POST /_control/defaults; POST /_control/script queues per-request
# overrides. One table drives validation, the command-line flags and the
# README's list.

FAULTS = ("timeout", "drip", "garbage", "midstream_error", "disconnect")

# name, type, default, help. Type "json" means any JSON value (set through
# --defaults or the control API only).
FIELDS = [
    ("status", int, 200, "HTTP status; anything but 2xx answers an OpenAI error object"),
    ("error", "json", None,
     "error preset name (see ERRORS) or a full {message,type,param,code} object"),
    ("retry_after", float, None,
     "seconds: sends Retry-After (rounded up) and retry-after-ms on an error answer"),
    ("latency_ms", int, 0, "delay before the first byte of the answer"),
    ("token_delay_ms", int, 0, "delay before each streamed content chunk"),
    ("tokens", int, None, "answer with this many generated tokens (words)"),
    ("text", str, None,
     "chat answer text, exactly; split into tokens at word starts (leading space kept)"),
    ("stamp", bool, False,
     "each streamed token is its send time (' %.6f' epoch seconds), for latency benches"),
    ("finish_reason", str, "stop", "finish_reason of the chat answer"),
    ("model", str, None, "model name in answers (default: the requested model)"),
    ("fault", str, None, "one of " + ", ".join(FAULTS)),
    ("fault_after", int, 3,
     "tokens sent before a midstream_error/disconnect/garbage fault in a stream"),
    ("drip_bytes", int, 1, "drip fault: bytes per write"),
    ("drip_delay_ms", int, 10, "drip fault: delay between writes"),
    ("sse_crlf", bool, False, "end SSE lines with CRLF instead of LF"),
    ("sse_keepalive", int, 0,
     "send a ': keep-alive' comment first and then after every N events (0: never)"),
    ("sse_multiline", bool, False,
     "split each chunk's JSON over several data: lines (valid SSE; OpenAI never does)"),
    ("sse_nospace", bool, False, "write 'data:' without the optional space"),
    ("context_tokens", int, 0,
     "chat: prompt tokens above this answer 400 context_length_exceeded (0: no limit)"),
    ("embed_dim", int, 1536, "embedding dimensions when the request gives none"),
    ("embed_max_inputs", int, 2048, "embeddings: more inputs answer 400"),
    ("embed_max_tokens", int, 8192, "embeddings: tokens per input above this answer 400"),
    ("embed_ignore_dimensions", bool, False,
     "embeddings: answer embed_dim dimensions whatever the request's dimensions say"),
    ("embed_reverse", bool, False, "embeddings: list data in reverse index order"),
    ("transcript", str, None,
     "transcription text (default: deterministic words derived from the file size)"),
    ("language", str, "english", "transcription language"),
    ("duration", float, None, "transcription duration in seconds (default: from the file)"),
    ("max_upload_bytes", int, 26214400, "transcription files above this answer 413"),
    ("usage", "json", None, "object merged over the computed usage"),
    ("close", bool, False, "close the connection after the answer"),
]
FIELD_TYPES = {f[0]: f[1] for f in FIELDS}
BASE_DEFAULTS = {f[0]: f[2] for f in FIELDS}

# Preset errors: (status, error object), worded as OpenAI words them.
ERRORS = {
    "rate_limit_exceeded": (429, {
        "message": "Rate limit reached for requests in organization org-fake on requests "
                   "per min (RPM): Limit 60, Used 60, Requested 1. Please try again in 1s.",
        "type": "requests", "param": None, "code": "rate_limit_exceeded"}),
    "insufficient_quota": (429, {
        "message": "You exceeded your current quota, please check your plan and billing "
                   "details. For more information on this error, read the docs: "
                   "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}),
    "server_error": (500, {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error", "param": None, "code": None}),
    "overloaded": (503, {
        "message": "The engine is currently overloaded, please try again later.",
        "type": "server_error", "param": None, "code": None}),
    "bad_gateway": (502, {"message": "Bad gateway.", "type": "server_error", "param": None,
                          "code": None}),
    "timeout": (408, {"message": "Request timed out.", "type": "server_error", "param": None,
                      "code": None}),
    "conflict": (409, {"message": "The request conflicted with another request.",
                       "type": "server_error", "param": None, "code": None}),
    "invalid_request_error": (400, {
        "message": "Invalid request.", "type": "invalid_request_error", "param": None,
        "code": None}),
    "invalid_api_key": (401, {
        "message": "Incorrect API key provided. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}),
    "missing_api_key": (401, {
        "message": "You didn't provide an API key. You need to provide your API key in an "
                   "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                   "YOUR_KEY). You can obtain an API key from "
                   "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error", "param": None, "code": None}),
    "model_not_found": (404, {
        "message": "The model does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": None, "code": "model_not_found"}),
    "context_length_exceeded": (400, {
        "message": "This model's maximum context length has been exceeded. Please reduce "
                   "the length of the messages.",
        "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}),
}
# The preset a bare status stands for.
STATUS_PRESET = {400: "invalid_request_error", 401: "invalid_api_key", 404: "model_not_found",
                 408: "timeout", 409: "conflict", 429: "rate_limit_exceeded",
                 500: "server_error", 502: "bad_gateway", 503: "overloaded"}

ENDPOINTS = {"chat/completions": "chat", "embeddings": "embeddings",
             "audio/transcriptions": "transcriptions", "models": "models"}
ENDPOINT_NAMES = ("chat", "embeddings", "transcriptions", "models")


class BadControl(Exception):
    """A control request the fake refuses (answered 400 with the message)."""


def coerce_field(name, value):
    """Validates one behaviour field; returns the value in its type."""
    if name not in FIELD_TYPES:
        raise BadControl(f"unknown behaviour field {name!r}")
    typ = FIELD_TYPES[name]
    if value is None or typ == "json":
        if name == "error" and isinstance(value, str) and value not in ERRORS:
            raise BadControl(f"unknown error preset {value!r}; presets: {sorted(ERRORS)}")
        if name == "error" and value is not None and not isinstance(value, (str, dict)):
            raise BadControl("error must be a preset name or an object")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise BadControl(f"{name} must be a boolean")
        return value
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ is str and isinstance(value, str):
        if name == "fault" and value not in FAULTS:
            raise BadControl(f"unknown fault {value!r}; faults: {list(FAULTS)}")
        return value
    raise BadControl(f"{name} must be of type {typ.__name__}")


def coerce_behaviour(obj, allow_ok=True):
    """Validates a behaviour object ({field: value}, plus "ok" in scripts)."""
    if not isinstance(obj, dict):
        raise BadControl("a behaviour must be a JSON object")
    out = {}
    for k, v in obj.items():
        if k == "ok" and allow_ok:
            if not isinstance(v, bool):
                raise BadControl("ok must be a boolean")
            out[k] = v
        else:
            out[k] = coerce_field(k, v)
    return out


class Behaviour(dict):
    """The resolved behaviour of one request; fields readable as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def error_answer(beh):
    """(status, body object) of the error a behaviour asks for."""
    preset = beh.error if isinstance(beh.error, str) else STATUS_PRESET.get(beh.status)
    status, err = ERRORS.get(preset, (beh.status, None))
    if beh.status != 200:
        status = beh.status
    if err is None:
        err = {"message": f"Fake error (status {status}).",
               "type": "server_error" if status >= 500 else "invalid_request_error",
               "param": None, "code": None}
    err = dict(err)
    if isinstance(beh.error, dict):
        err.update(beh.error)
    return status, {"error": err}


# ---------------------------------------------------------------------------
# Text, tokens, embeddings, transcripts. All deterministic.

VOCAB = ("the team walks through the release plan and the dashboard shows how each "
         "customer account moves from trial to paid while support answers questions "
         "about billing invoices reports exports security reviews onboarding metrics "
         "alerts deployments backups recordings documents search results").split()

SENTINEL = "\x00token\x00"  # never in an answer: JSON-escaped as \u0000
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_PIECE_RE = re.compile(r"\s*\S+|\s+")


def count_tokens(text):
    """The fake's token count: one per word and per punctuation character."""
    return len(_TOKEN_RE.findall(text))


def split_pieces(text):
    """Splits text into stream tokens (leading whitespace kept with each word)
    whose concatenation is exactly text."""
    return _PIECE_RE.findall(text)


def generated_pieces(n):
    return [("" if i == 0 else " ") + VOCAB[i % len(VOCAB)] for i in range(n)]


def message_text(content):
    """The text of a chat message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def auto_answer(messages):
    """A deterministic Markdown answer derived from the prompt: a title, a
    summary and key points taken from the last user message (longer prompts
    give longer answers), citing [1].. when the prompt numbers sources."""
    user = ""
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            user = message_text(m.get("content"))
    everything = " ".join(message_text(m.get("content")) for m in messages if isinstance(m, dict))
    words = re.findall(r"[A-Za-z0-9']+", user) or ["Untitled"]
    sources = sorted({int(n) for n in re.findall(r"\[(\d{1,2})\]", everything)})[:3]
    cite = "".join(f" [{n}]" for n in sources)
    title = " ".join(words[:6])
    title = title[:1].upper() + title[1:]
    out = [f"# {title}", "", "## Summary", "", " ".join(words[:40]) + "." + cite, "",
           "## Key points", ""]
    npoints = max(3, min(20, len(words) // 100))
    step = max(1, len(words) // npoints)
    for i in range(npoints):
        chunk = words[i * step:i * step + 12] or words[:12]
        out.append("- " + " ".join(chunk))
    return "\n".join(out) + "\n"


def embed(item, dim):
    """A deterministic unit vector for one input: signed hashed word features
    (four per word, sublinear term frequency), so texts sharing words have a
    positive cosine; an input without words gets a hash-seeded direction.
    The array is shared through a cache: do not modify it."""
    return _embedding(item, dim)[0]


def embed_base64(item, dim):
    """embed() as base64 float32 (little-endian), cached like the vector."""
    entry = _embedding(item, dim)
    if entry[1] is None:
        entry[1] = base64.b64encode(entry[0].tobytes()).decode()
    return entry[1]


def embed_json(item, dim, fmt):
    """The JSON text of the "embedding" value in format fmt (float or
    base64), cached like the vector."""
    entry = _embedding(item, dim)
    slot = 2 if fmt == "base64" else 3
    if entry[slot] is None:
        entry[slot] = json.dumps(embed_base64(item, dim) if fmt == "base64" else
                                 entry[0].tolist())
    return entry[slot]


# (text, dim) -> [vector, its base64, JSON of the base64, JSON of the
# floats] (None until asked for). Benches embed the same transcript chunks
# over and over; bounded, oldest entry out first.
_EMBED_CACHE = {}
_EMBED_CACHE_MAX = 1024


def _embedding(item, dim):
    text = item if isinstance(item, str) else " ".join(str(t) for t in item)
    key = (text, dim)
    entry = _EMBED_CACHE.get(key)
    if entry is None:
        entry = [_embed_vector(text, dim), None, None, None]
        if len(_EMBED_CACHE) >= _EMBED_CACHE_MAX:
            del _EMBED_CACHE[next(iter(_EMBED_CACHE))]
        _EMBED_CACHE[key] = entry
    return entry


def _embed_vector(text, dim):
    # Only the dimensions a word touches are visited: the sums, the norm
    # (in index order, as over the whole vector: zeros add nothing) and
    # the float32 values are the ones a dense loop gives.
    acc = {}
    counts = collections.Counter(re.findall(r"\w+", text.lower()))
    for word, n in counts.items():
        d = hashlib.blake2b(word.encode(), digest_size=16).digest()
        w = 1.0 + math.log(n)
        for k in range(0, 16, 4):
            x = int.from_bytes(d[k:k + 4], "little")
            i = (x >> 1) % dim
            acc[i] = acc.get(i, 0.0) + (w if x & 1 else -w)
    norm = math.sqrt(sum(acc[i] * acc[i] for i in sorted(acc)))
    vec = array.array("f", bytes(4 * dim))
    if norm == 0.0:
        h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        vec[h % dim] = 1.0
        return vec
    for i, v in acc.items():
        vec[i] = v / norm
    return vec


def audio_duration(data):
    """Seconds of a WAV file from its header; otherwise estimated from the
    size as 128 kbit/s compressed audio. Never below half a second."""
    if len(data) >= 44 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        pos, byte_rate = 12, 0
        while pos + 8 <= len(data):
            cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if cid == b"fmt " and size >= 16:
                byte_rate = struct.unpack("<I", data[pos + 16:pos + 20])[0]
            elif cid == b"data" and byte_rate:
                size = min(size, len(data) - pos - 8)
                return max(0.5, size / byte_rate)
            pos += 8 + size + (size & 1)
    return max(0.5, len(data) / 16000.0)


def transcript_words(size, duration):
    """Deterministic sentences for a file of this size: 2.5 words a second."""
    rng = random.Random(size)
    n = max(1, round(duration * 2.5))
    words, left = [], 0
    for _ in range(n):
        w = rng.choice(VOCAB)
        if left == 0:
            w = w.capitalize()
            left = rng.randint(6, 14)
        left -= 1
        words.append(w + "." if left == 0 else w)
    if not words[-1].endswith("."):
        words[-1] += "."
    return words


def transcription(text_words, duration, language, granularities):
    """The verbose_json body for these words spread evenly over duration."""
    n = len(text_words)
    slot = duration / max(1, n)
    words = []
    for i, w in enumerate(text_words):
        start = round(i * slot, 2)
        end = max(start, round(i * slot + slot * 0.85, 2))
        words.append({"word": w.strip(".,!?;:\"'") or w, "start": start, "end": end})
    segments, cur = [], []
    for i, w in enumerate(text_words):
        cur.append(i)
        if w.endswith((".", "!", "?")) or len(cur) == 12 or i == n - 1:
            seg_text = " " + " ".join(text_words[j] for j in cur)
            segments.append({
                "id": len(segments), "seek": 0, "start": words[cur[0]]["start"],
                "end": words[cur[-1]]["end"], "text": seg_text,
                "tokens": [50364 + j for j in cur], "temperature": 0.0,
                "avg_logprob": -0.25, "compression_ratio": 1.4, "no_speech_prob": 0.01})
            cur = []
    body = {"task": "transcribe", "language": language, "duration": round(duration, 2),
            "text": " ".join(text_words)}
    if "word" in granularities:
        body["words"] = words
    body["segments"] = segments
    body["usage"] = {"type": "duration", "seconds": math.ceil(duration)}
    return body


def _clock(t, comma):
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3600000)
    m, ms = divmod(ms, 60000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{',' if comma else '.'}{ms:03d}"


def subtitles(segments, fmt):
    if fmt == "vtt":
        out = ["WEBVTT", ""]
        for s in segments:
            out += [f"{_clock(s['start'], False)} --> {_clock(s['end'], False)}",
                    s["text"].strip(), ""]
    else:
        out = []
        for s in segments:
            out += [str(s["id"] + 1), f"{_clock(s['start'], True)} --> {_clock(s['end'], True)}",
                    s["text"].strip(), ""]
    return "\n".join(out) + "\n"


def parse_multipart(body, content_type):
    """{name: [(value bytes, filename or None)]} of a multipart/form-data body."""
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type or "")
    if not m:
        return None
    delim = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    fields = {}
    for part in body.split(delim)[1:]:
        if part.startswith(b"--"):
            break
        part = part[2:] if part.startswith(b"\r\n") else part
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if value.endswith(b"\r\n"):
            value = value[:-2]
        disp = ""
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                disp = line
        name = re.search(r'\bname="([^"]*)"', disp)
        fname = re.search(r'\bfilename="([^"]*)"', disp)
        if name:
            fields.setdefault(name.group(1), []).append((value, fname.group(1) if fname else None))
    return fields


# ---------------------------------------------------------------------------
# State: defaults, scripts, statistics and the per-request records.

class Record:
    """What the fake knows about one provider request. Times are epoch
    seconds (time.time()) so another process can compare them."""

    __slots__ = ("id", "endpoint", "method", "path", "model", "stream", "status", "fault",
                 "auth", "started_at", "first_byte_at", "finished_at", "closed_at",
                 "completed", "client_closed", "server_closed", "tokens_sent", "bytes_sent",
                 "pauses", "paused", "body_bytes")

    def __init__(self, rid, endpoint, req):
        self.id, self.endpoint, self.method, self.path = rid, endpoint, req.method, req.path
        self.model = self.status = self.fault = self.first_byte_at = None
        self.finished_at = self.closed_at = None
        self.stream = self.completed = self.client_closed = self.server_closed = False
        self.paused = False
        self.auth = req.headers.get("authorization")
        self.started_at = time.time()
        self.tokens_sent = self.bytes_sent = self.pauses = 0
        self.body_bytes = len(req.body)

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


class Stats:
    GAUGES = ("connections_open", "streams_active", "streams_paused", "in_flight")

    def __init__(self):
        self.requests = collections.Counter()
        self.by_status = collections.Counter()
        self.connections_open = self.connections_total = 0
        self.streams_active = self.streams_paused = self.streams_paused_peak = 0
        self.streams_completed = 0
        self.client_closed_early = self.server_closed = 0
        self.bytes_sent = self.tokens_sent = 0
        self.in_flight = 0

    def as_dict(self):
        req = {k: self.requests.get(k, 0) for k in ENDPOINT_NAMES + ("other",)}
        req["total"] = sum(self.requests.values())
        return {"requests": req, "responses_by_status": {str(k): v for k, v in
                                                         sorted(self.by_status.items())},
                "connections_open": self.connections_open,
                "connections_total": self.connections_total,
                "in_flight": self.in_flight, "streams_active": self.streams_active,
                "streams_paused": self.streams_paused,
                "streams_paused_peak": self.streams_paused_peak,
                "streams_completed": self.streams_completed,
                "client_closed_early": self.client_closed_early,
                "server_closed": self.server_closed, "bytes_sent": self.bytes_sent,
                "tokens_sent": self.tokens_sent}


class State:
    """Defaults, script queues and the records; reset() restores the
    command-line defaults."""

    def __init__(self, cli_defaults, per_model, keep_records):
        self.cli_defaults, self.cli_per_model = dict(cli_defaults), dict(per_model)
        self.keep_records = keep_records
        self.reset()

    def reset(self):
        # Connections and streams live on across a reset: keep the gauges.
        old = getattr(self, "stats", None)
        self.defaults = dict(self.cli_defaults)
        self.per_model = dict(self.cli_per_model)
        self.scripts = collections.defaultdict(collections.deque)
        self.stats = Stats()
        if old is not None:
            for gauge in Stats.GAUGES:
                setattr(self.stats, gauge, getattr(old, gauge))
        self.records = collections.deque(maxlen=self.keep_records)
        self.bodies = collections.OrderedDict()   # id -> parsed JSON or form summary
        self.next_id = 1

    def new_record(self, endpoint, req):
        rec = Record(self.next_id, endpoint, req)
        self.next_id += 1
        self.records.append(rec)
        self.stats.requests[endpoint] += 1
        return rec

    def keep_body(self, rec, obj):
        """Keeps what a request sent (bounded: the last 256 bodies, each under
        1 MiB of request) for GET /_control/requests?bodies=1."""
        if rec.body_bytes <= 1 << 20:
            self.bodies[rec.id] = obj
            while len(self.bodies) > 256:
                self.bodies.popitem(last=False)

    def take(self, endpoint, model):
        """The behaviour of the next request to endpoint: defaults, then the
        per-model override, then the next scripted entry (endpoint queue
        first, then the "*" queue)."""
        beh = Behaviour(BASE_DEFAULTS)
        beh.update(self.defaults)
        if model in self.per_model:
            beh.update(self.per_model[model])
        q = self.scripts.get(endpoint)
        if not q:
            q = self.scripts.get("*")
        if q:
            step = dict(q.popleft())
            if step.pop("ok", False):
                beh.update(status=200, error=None, fault=None)
            beh.update(step)
        return beh


# ---------------------------------------------------------------------------
# HTTP/1.1 reading.

MAX_HEAD = 64 * 1024


class HttpError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


@functools.lru_cache(maxsize=1024)
def split_target(target):
    """(path, query pairs) of a request target."""
    url = urllib.parse.urlsplit(target)
    return url.path, tuple(urllib.parse.parse_qsl(url.query))


class Request:
    __slots__ = ("method", "target", "path", "query", "version", "headers", "body", "keep_alive")


class Reader(asyncio.StreamReader):
    """The StreamReader of a connection; tells its Conn when the client
    closes or resets the connection (the transport stops reading once
    READER_BUFFER bytes wait, as a watcher that stops reading would)."""

    conn = None

    def feed_eof(self):
        super().feed_eof()
        if self.conn is not None:
            self.conn.client_went_away()

    def set_exception(self, exc):
        super().set_exception(exc)
        if self.conn is not None:
            self.conn.client_went_away()


READER_BUFFER = (1 << 20) + (128 << 10)


class Conn:
    """One client connection: a byte buffer over the StreamReader (which
    keeps pipelined bytes while a response streams), and the task of the
    answer in progress, cancelled as soon as the client goes away."""

    def __init__(self, app, reader, writer):
        self.app, self.reader, self.writer = app, reader, writer
        self.buf = bytearray()
        self.eof = False
        self.gone = False        # the client closed or reset the connection
        self.answering = None    # the task of the answer in progress
        self.cut_off = False     # that task was cancelled because the client went
        reader.conn = self

    def client_went_away(self):
        self.gone = True
        t = self.answering
        if t is not None and not self.cut_off:
            self.cut_off = True
            t.cancel()

    async def fill(self):
        """Reads more bytes into buf; returns how many (0 at end of stream)."""
        if self.eof:
            return 0
        try:
            data = await self.reader.read(65536)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.eof = True
            return 0
        self.buf += data
        return len(data)

    async def _need(self, n):
        while len(self.buf) < n:
            if await self.fill() == 0:
                raise ConnectionResetError("client closed mid-request")

    async def _line(self):
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > 8192:
                raise HttpError(400, "line too long")
            start = max(0, len(self.buf) - 1)
            if await self.fill() == 0:
                raise ConnectionResetError("client closed mid-request")

    async def read_request(self):
        """The next request with its whole body, or None at a clean end."""
        while self.buf[:2] == b"\r\n":
            del self.buf[:2]
        start = 0
        while True:
            i = self.buf.find(b"\r\n\r\n", start)
            if i >= 0:
                break
            if len(self.buf) > MAX_HEAD:
                raise HttpError(431, "request header too large")
            start = max(0, len(self.buf) - 3)
            if await self.fill() == 0:
                return None
        head = bytes(self.buf[:i]).decode("latin-1")
        del self.buf[:i + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "bad request line")
        req = Request()
        req.method, req.target, req.version = parts
        req.path, query = split_target(req.target)
        req.query = dict(query)
        req.headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, "bad header line")
            name, value = name.lower(), value.strip()
            req.headers[name] = req.headers[name] + ", " + value if name in req.headers else value
        tokens = {t.strip().lower() for t in req.headers.get("connection", "").split(",")}
        req.keep_alive = ("close" not in tokens if req.version == "HTTP/1.1"
                          else "keep-alive" in tokens)
        req.body = await self._read_body(req)
        return req

    async def _read_body(self, req):
        te = req.headers.get("transfer-encoding", "").lower()
        cl = req.headers.get("content-length")
        chunked = te.endswith("chunked")
        if te and not chunked:
            raise HttpError(400, "unsupported transfer-encoding")
        length = 0
        if not chunked and cl is not None:
            if not cl.isdigit():
                raise HttpError(400, "bad content-length")
            length = int(cl)
            if length > self.app.max_body:
                raise HttpError(413, f"Maximum content size limit ({self.app.max_body}) "
                                     f"exceeded ({length} bytes announced)")
        if (chunked or length) and req.headers.get("expect", "").lower() == "100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not chunked:
            await self._need(length)
            body = bytes(self.buf[:length])
            del self.buf[:length]
            return body
        body = bytearray()
        while True:
            size_line = (await self._line()).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise HttpError(400, "bad chunk size") from None
            if size == 0:
                while await self._line():
                    pass  # trailers
                return bytes(body)
            if len(body) + size > self.app.max_body:
                raise HttpError(413, "request body too large")
            await self._need(size + 2)
            body += self.buf[:size]
            del self.buf[:size + 2]


# ---------------------------------------------------------------------------
# HTTP/1.1 writing.

_date_cache = [0, ""]
REASONS = {s.value: s.phrase for s in http.HTTPStatus}


def http_date():
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, email.utils.formatdate(now, usegmt=True)]
    return _date_cache[1]


class Responder:
    """Writes one answer: status line and headers, a fixed or chunked body,
    the drip fault, byte accounting, and drain with backpressure stats (a
    write that leaves more than the high-water mark buffered waits for the
    client to read, and counts as a paused stream meanwhile)."""

    def __init__(self, app, conn, rec, beh, req):
        self.app, self.conn, self.rec, self.beh = app, conn, rec, beh
        self.keep = req.keep_alive and not beh.close
        self.chunked = False
        self.t0 = time.monotonic()

    async def _put(self, data):
        w = self.conn.writer
        if w.transport.is_closing():
            raise ConnectionResetError("connection closed")
        w.write(data)
        st = self.app.state.stats
        self.rec.bytes_sent += len(data)
        st.bytes_sent += len(data)
        if self.rec.first_byte_at is None:
            self.rec.first_byte_at = time.time()
        if w.transport.get_write_buffer_size() > self.app.high_water:
            st.streams_paused += 1
            st.streams_paused_peak = max(st.streams_paused_peak, st.streams_paused)
            self.rec.pauses += 1
            self.rec.paused = True
            try:
                await w.drain()
            finally:
                st.streams_paused -= 1
                self.rec.paused = False

    async def send(self, data):
        if self.beh.fault != "drip":
            await self._put(data)
            return
        step, delay = max(1, self.beh.drip_bytes), self.beh.drip_delay_ms / 1000.0
        for i in range(0, len(data), step):
            await self._put(data[i:i + step])
            await asyncio.sleep(delay)

    def _head(self, status, ctype, length, headers):
        """The status line and headers, as bytes; counts the status."""
        self.rec.status = status
        self.app.state.stats.by_status[status] += 1
        self.chunked = length is None
        reason = REASONS.get(status, "Unknown")
        lines = [f"HTTP/1.1 {status} {reason}", f"date: {http_date()}",
                 f"content-type: {ctype}",
                 f"x-request-id: req_{self.rec.id:08d}fake",
                 "openai-version: 2020-10-01",
                 f"openai-processing-ms: {int((time.monotonic() - self.t0) * 1000)}",
                 "transfer-encoding: chunked" if self.chunked else f"content-length: {length}",
                 "connection: " + ("keep-alive" if self.keep else "close")]
        if self.rec.model:
            lines.append(f"openai-model: {self.rec.model}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    async def head(self, status, ctype, length=None, headers=None):
        await self.send(self._head(status, ctype, length, headers))

    async def fixed(self, status, ctype, body, headers=None, cut=None):
        """The head and a body of known length in one write (the drip fault
        still drips the head and then the body); cut sends only that many
        bytes of the body."""
        head = self._head(status, ctype, len(body), headers)
        sent = body if cut is None else body[:cut]
        if self.beh.fault == "drip":
            await self.send(head)
            await self.send(sent)
        else:
            await self._put(head + sent)

    async def chunk(self, data):
        await self.send(b"%x\r\n%s\r\n" % (len(data), data))

    async def end(self):
        if self.chunked:
            await self.send(b"0\r\n\r\n")
        self.rec.completed = True
        self.rec.finished_at = time.time()

    async def json(self, status, obj, headers=None, body=None):
        """obj as a JSON answer; body, when given, is json.dumps(obj) encoded."""
        if body is None:
            body = json.dumps(obj).encode()
        await self.fixed(status, "application/json", body, headers)
        await self.end()

    async def error(self, beh):
        status, body = error_answer(beh)
        headers = {}
        if beh.retry_after is not None:
            headers["retry-after"] = str(max(0, math.ceil(beh.retry_after)))
            headers["retry-after-ms"] = str(int(beh.retry_after * 1000))
        if status == 429:
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = f"{beh.retry_after or 1}s"
        await self.json(status, body, headers)

    async def garbage_json(self, prefix):
        """A 200 whose application/json body is cut in the middle."""
        await self.fixed(200, "application/json", prefix.encode())
        await self.end()

    async def cut_json(self, obj):
        """The disconnect fault outside streams: announce the whole body, send
        half of it, close."""
        body = json.dumps(obj).encode()
        await self.fixed(200, "application/json", body, cut=len(body) // 2)
        self.server_close()

    def server_close(self):
        self.rec.server_closed = True
        self.rec.closed_at = time.time()
        self.app.state.stats.server_closed += 1
        self.keep = False
        self.conn.writer.transport.close()


class Sse:
    """SSE framing of one stream, with the framing options of a behaviour."""

    def __init__(self, beh):
        self.nl = "\r\n" if beh.sse_crlf else "\n"
        self.field = "data:" if beh.sse_nospace else "data: "
        self.multiline = beh.sse_multiline

    def event(self, obj):
        if self.multiline and isinstance(obj, dict):
            lines = json.dumps(obj, indent=1).split("\n")
        else:
            lines = [obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))]
        return "".join(self.field + line + self.nl for line in lines).encode() + \
            self.nl.encode()

    def comment(self, text="keep-alive"):
        return f": {text}{self.nl}{self.nl}".encode()


# ---------------------------------------------------------------------------
# Provider endpoints. Each handler gets (app, conn, req, rec) and returns
# whether the connection may serve another request.

def bad_request(message, param=None, code=None):
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}


class Reject(Exception):
    """A request answered with a validation error (status, body)."""

    def __init__(self, status, body):
        super().__init__(body["error"]["message"])
        self.status, self.body = status, body


def parse_json_body(req):
    try:
        obj = json.loads(req.body)
    except ValueError:
        raise Reject(400, bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.")) from None
    if not isinstance(obj, dict):
        raise Reject(400, bad_request("The request body must be a JSON object."))
    return obj


async def start_answer(resp, beh):
    """Common prelude: latency, scripted error, timeout fault. Returns True
    when the caller should go on and answer."""
    if beh.latency_ms:
        await asyncio.sleep(beh.latency_ms / 1000.0)
    if beh.status >= 300 or (beh.error is not None and beh.fault != "midstream_error"):
        await resp.error(beh)
        return False
    if beh.fault == "timeout":
        await asyncio.get_running_loop().create_future()  # until the client gives up
    return True


def chat_pieces(beh, body):
    if beh.text is not None:
        return split_pieces(beh.text)
    if beh.tokens is not None:
        return generated_pieces(beh.tokens)
    return split_pieces(auto_answer(body["messages"]))


async def handle_chat(app, conn, req, rec, resp_factory):
    body = parse_json_body(req)
    app.state.keep_body(rec, body)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Reject(400, bad_request("you must provide a model parameter"))
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise Reject(400, bad_request("Missing required parameter: 'messages'.", "messages",
                                      "missing_required_parameter"))
    rec.model, rec.stream = body["model"], body.get("stream") is True
    beh = app.state.take("chat", rec.model)
    rec.fault = beh.fault
    if beh.model:
        rec.model = beh.model
    resp = resp_factory(beh)
    if not await start_answer(resp, beh):
        return resp.keep
    prompt_tokens = sum(count_tokens(message_text(m.get("content"))) + 3
                        for m in msgs if isinstance(m, dict)) + 3
    if beh.context_tokens and prompt_tokens > beh.context_tokens:
        status, err = ERRORS["context_length_exceeded"]
        err = dict(err, message=f"This model's maximum context length is {beh.context_tokens} "
                                f"tokens. However, your messages resulted in {prompt_tokens} "
                                "tokens. Please reduce the length of the messages.")
        await resp.json(status, {"error": err})
        return resp.keep
    pieces = chat_pieces(beh, body)
    finish = beh.finish_reason
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and 0 < limit < len(pieces):
        pieces, finish = pieces[:limit], "length"
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
             "total_tokens": prompt_tokens + len(pieces)}
    if isinstance(beh.usage, dict):
        usage.update(beh.usage)
    ident = f"chatcmpl-fake{rec.id:010d}"
    if rec.stream:
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        await stream_chat(app, resp, beh, rec, ident, pieces, finish, usage, include_usage)
        return resp.keep
    text = "".join(pieces)
    answer = {"id": ident, "object": "chat.completion", "created": int(time.time()),
              "model": rec.model, "system_fingerprint": "fp_fake",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                   "refusal": None},
                           "logprobs": None, "finish_reason": finish}],
              "usage": usage}
    if beh.fault == "garbage":
        await resp.garbage_json(json.dumps(answer)[:60])
    elif beh.fault == "disconnect":
        await resp.cut_json(answer)
    elif beh.fault == "midstream_error":
        await resp.json(200, error_answer(Behaviour(beh, status=500))[1])
    else:
        rec.tokens_sent = len(pieces)
        app.state.stats.tokens_sent += len(pieces)
        await resp.json(200, answer)
    return resp.keep


async def stream_chat(app, resp, beh, rec, ident, pieces, finish, usage, include_usage):
    """The streamed answer: a role chunk, one chunk per token, the finish
    chunk, the usage chunk when asked, [DONE]; faults after fault_after
    tokens."""
    st = app.state.stats
    sse = Sse(beh)
    base = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": rec.model, "system_fingerprint": "fp_fake"}

    def chunk(delta, reason):
        obj = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None,
                                   "finish_reason": reason}])
        if include_usage:
            obj["usage"] = None
        return obj

    events, keepalive = 0, beh.sse_keepalive

    async def emit(payload):
        nonlocal events
        await resp.chunk(payload if isinstance(payload, bytes) else sse.event(payload))
        events += 1
        if keepalive and events % keepalive == 0:
            await resp.chunk(sse.comment())

    # Content events are a template split around the token's JSON string
    # (one json.dumps per token instead of one per chunk object): benches
    # stream 50,000 tokens a second through here.
    sentinel = json.dumps(SENTINEL).encode()
    pre, post = sse.event(chunk({"content": SENTINEL}, None)).split(sentinel)

    st.streams_active += 1
    try:
        await resp.head(200, "text/event-stream; charset=utf-8")
        if beh.sse_keepalive:
            await resp.chunk(sse.comment())
        await emit(chunk({"role": "assistant", "content": "", "refusal": None}, None))
        delay, stamp = beh.token_delay_ms / 1000.0, beh.stamp
        cut = beh.fault_after if beh.fault in ("midstream_error", "disconnect", "garbage") \
            else len(pieces)
        due = time.monotonic()
        for i, piece in enumerate(pieces[:cut]):
            if delay:
                # Absolute pacing keeps the cadence exact; after a pause
                # (backpressure) it restarts from now instead of bursting.
                due = max(due + delay, time.monotonic())
                await asyncio.sleep(due - time.monotonic())
            if stamp:
                piece = ("" if i == 0 else " ") + f"{time.time():.6f}"
            await emit(pre + json.dumps(piece).encode() + post)
            rec.tokens_sent += 1
            st.tokens_sent += 1
        if beh.fault == "midstream_error":
            await emit(error_answer(Behaviour(beh, status=500))[1])
            await resp.end()
            resp.server_close()
            return
        if beh.fault == "disconnect":
            resp.server_close()
            return
        if beh.fault == "garbage":
            await resp.chunk(f'data: {{"id":"{ident}","choices":[{{"delta":{{"content":"'
                             .encode() + sse.nl.encode() * 2)
        await emit(chunk({}, finish))
        if include_usage:
            await emit(dict(base, choices=[], usage=usage))
        await emit("[DONE]")
        await resp.end()
        st.streams_completed += 1
    finally:
        st.streams_active -= 1


async def handle_embeddings(app, conn, req, rec, resp_factory):
    body = parse_json_body(req)
    app.state.keep_body(rec, body)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Reject(400, bad_request("you must provide a model parameter"))
    rec.model = body["model"]
    inp = body.get("input")
    if isinstance(inp, str) or (isinstance(inp, list) and inp and
                                all(isinstance(t, int) for t in inp)):
        items = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(t, str) or (
            isinstance(t, list) and t and all(isinstance(x, int) for x in t)) for t in inp):
        items = inp
    else:
        raise Reject(400, bad_request("'$.input' is invalid. Please check the API reference: "
                                      "https://platform.openai.com/docs/api-reference.",
                                      "input"))
    dim = body.get("dimensions")
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
        raise Reject(400, bad_request("Invalid 'dimensions': must be a positive integer.",
                                      "dimensions", "invalid_value"))
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise Reject(400, bad_request("Invalid 'encoding_format': expected 'float' or "
                                      "'base64'.", "encoding_format", "invalid_value"))
    beh = app.state.take("embeddings", rec.model)
    rec.fault = beh.fault
    if beh.model:
        rec.model = beh.model
    resp = resp_factory(beh)
    if not await start_answer(resp, beh):
        return resp.keep
    if len(items) > beh.embed_max_inputs:
        await resp.json(400, bad_request(
            f"Invalid 'input': maximum array length is {beh.embed_max_inputs}, but got an "
            f"array with length {len(items)} instead.", "input", "array_above_max_length"))
        return resp.keep
    counts = [count_tokens(t) if isinstance(t, str) else len(t) for t in items]
    worst = max(counts)
    if beh.embed_max_tokens and worst > beh.embed_max_tokens:
        await resp.json(400, bad_request(
            f"This model's maximum context length is {beh.embed_max_tokens} tokens, however "
            f"you requested {worst} tokens ({worst} in your prompt; 0 for the completion). "
            "Please reduce your prompt; or completion length."))
        return resp.keep
    dim = beh.embed_dim if beh.embed_ignore_dimensions else (dim or beh.embed_dim)
    order = list(range(len(items)))
    if beh.embed_reverse:
        order.reverse()
    usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
    if isinstance(beh.usage, dict):
        usage.update(beh.usage)
    if beh.fault is None:
        # json.dumps of the answer object below, put together from the
        # cached JSON of each vector.
        body = ('{"object": "list", "data": [' + ", ".join(
            '{"object": "embedding", "index": %d, "embedding": %s}' % (
                i, embed_json(items[i], dim, fmt)) for i in order) +
            '], "model": ' + json.dumps(rec.model) + ', "usage": ' + json.dumps(usage) +
            "}").encode()
        await resp.json(200, None, body=body)
        return resp.keep
    data = [{"object": "embedding", "index": i, "embedding": embed_base64(items[i], dim)
             if fmt == "base64" else embed(items[i], dim).tolist()} for i in order]
    answer = {"object": "list", "data": data, "model": rec.model, "usage": usage}
    await finish_json(resp, beh, answer)
    return resp.keep


async def finish_json(resp, beh, answer):
    """Sends a non-streamed 200 answer, or its fault."""
    if beh.fault == "garbage":
        await resp.garbage_json(json.dumps(answer)[:60])
    elif beh.fault == "disconnect":
        await resp.cut_json(answer)
    elif beh.fault == "midstream_error":
        await resp.json(200, error_answer(Behaviour(beh, status=500))[1])
    else:
        await resp.json(200, answer)


async def handle_transcriptions(app, conn, req, rec, resp_factory):
    form = parse_multipart(req.body, req.headers.get("content-type"))
    if form is None:
        raise Reject(400, bad_request("Invalid Content-Type header: expected "
                                      "multipart/form-data with a boundary."))

    def field(name, default=None):
        v = form.get(name)
        return v[0][0].decode("utf-8", "replace") if v else default

    grans = [v.decode() for v, _ in form.get("timestamp_granularities[]", []) +
             form.get("timestamp_granularities", [])]
    fmt = field("response_format", "json")
    app.state.keep_body(rec, {
        k: [("<file %s, %d bytes>" % (fn, len(v)) if fn is not None else
             v.decode("utf-8", "replace")) for v, fn in vals] for k, vals in form.items()})
    if "file" not in form:
        raise Reject(400, bad_request("Missing required parameter: 'file'.", "file",
                                      "missing_required_parameter"))
    if not field("model"):
        raise Reject(400, bad_request("Missing required parameter: 'model'.", "model",
                                      "missing_required_parameter"))
    if fmt not in ("json", "text", "srt", "verbose_json", "vtt"):
        raise Reject(400, bad_request(f"Invalid 'response_format': {fmt!r}.",
                                      "response_format", "invalid_value"))
    if grans and fmt != "verbose_json":
        raise Reject(400, bad_request("timestamp_granularities requires response_format "
                                      "verbose_json.", "timestamp_granularities"))
    rec.model = field("model")
    beh = app.state.take("transcriptions", rec.model)
    rec.fault = beh.fault
    if beh.model:
        rec.model = beh.model
    resp = resp_factory(beh)
    if not await start_answer(resp, beh):
        return resp.keep
    audio = form["file"][0][0]
    if len(audio) > beh.max_upload_bytes:
        await resp.json(413, {"error": {
            "message": f"Maximum content size limit ({beh.max_upload_bytes}) exceeded "
                       f"({len(audio)} bytes read)",
            "type": "server_error", "param": None, "code": None}})
        return resp.keep
    duration = beh.duration if beh.duration is not None else audio_duration(audio)
    verbose, bodies = transcription_cached(beh.transcript, len(audio), duration, beh.language,
                                           tuple(grans or ["segment"]))
    if fmt in ("text", "srt", "vtt") and beh.fault is None:
        body = bodies.get(fmt)
        if body is None:
            body = bodies[fmt] = ((verbose["text"] + "\n").encode() if fmt == "text" else
                                  subtitles(verbose["segments"], fmt).encode())
        await resp.fixed(200, "text/plain; charset=utf-8", body)
        await resp.end()
        return resp.keep
    if fmt == "verbose_json" and beh.fault is None:
        body = bodies.get(fmt)
        if body is None:
            body = bodies[fmt] = json.dumps(verbose).encode()
        await resp.json(200, verbose, body=body)
        return resp.keep
    answer = verbose if fmt == "verbose_json" else {"text": verbose["text"]}
    await finish_json(resp, beh, answer)
    return resp.keep


# (transcript, size, duration, language, granularities) -> (verbose_json
# object, {format: encoded answer}). Every upload of one file gets the same
# answer; bounded, oldest entry out first. The objects are shared: read-only.
_TRANSCRIPTION_CACHE = {}
_TRANSCRIPTION_CACHE_MAX = 256


def transcription_cached(transcript, size, duration, language, grans):
    key = (transcript, None if transcript is not None else size, duration, language, grans)
    entry = _TRANSCRIPTION_CACHE.get(key)
    if entry is None:
        words = transcript.split() if transcript is not None else \
            transcript_words(size, duration)
        entry = (transcription(words, duration, language, list(grans)), {})
        if len(_TRANSCRIPTION_CACHE) >= _TRANSCRIPTION_CACHE_MAX:
            del _TRANSCRIPTION_CACHE[next(iter(_TRANSCRIPTION_CACHE))]
        _TRANSCRIPTION_CACHE[key] = entry
    return entry


async def handle_models(app, conn, req, rec, resp_factory):
    beh = app.state.take("models", None)
    resp = resp_factory(beh)
    if not await start_answer(resp, beh):
        return resp.keep
    names = sorted({app.state.defaults.get("model") or "gpt-4o-mini", "text-embedding-3-small",
                    "whisper-1"} | set(app.state.per_model))
    await resp.json(200, {"object": "list", "data": [
        {"id": n, "object": "model", "created": 1700000000, "owned_by": "fake"}
        for n in names]})
    return resp.keep


HANDLERS = {"chat": handle_chat, "embeddings": handle_embeddings,
            "transcriptions": handle_transcriptions, "models": handle_models}
METHODS = {"chat": "POST", "embeddings": "POST", "transcriptions": "POST", "models": "GET"}


# ---------------------------------------------------------------------------
# Control API (/_control/...). Small JSON answers, no auth.

def control_script(state, req, body):
    """Queues behaviours. Body: a list (the "*" queue, used by any endpoint
    whose own queue is empty), {"endpoint": E, "behaviours": [...]}, or
    {E: [...], ...}. ?append=1 appends instead of replacing."""
    if isinstance(body, list):
        plan = {"*": body}
    elif isinstance(body, dict) and "behaviours" in body:
        plan = {body.get("endpoint", "*"): body["behaviours"]}
    elif isinstance(body, dict):
        plan = body
    else:
        raise BadControl("script body must be a list or an object")
    clean = {}
    for ep, steps in plan.items():
        ep = ENDPOINTS.get(ep, ep)
        if ep not in ENDPOINT_NAMES and ep != "*":
            raise BadControl(f"unknown endpoint {ep!r}; endpoints: {list(ENDPOINT_NAMES)}")
        if not isinstance(steps, list):
            raise BadControl("behaviours must be a list")
        clean[ep] = [coerce_behaviour(s) for s in steps]
    for ep, steps in clean.items():
        if req.query.get("append") not in ("1", "true"):
            state.scripts[ep].clear()
        state.scripts[ep].extend(steps)
    return {"queued": {ep: len(q) for ep, q in state.scripts.items() if q}}


def control_defaults(state, req, body):
    """Merges fields into the defaults; "per_model": {model: behaviour}
    replaces the per-model overrides; a null field restores the built-in
    default."""
    if req.method == "POST":
        if not isinstance(body, dict):
            raise BadControl("defaults body must be an object")
        body = dict(body)
        per_model = body.pop("per_model", None)
        clean = coerce_behaviour(body, allow_ok=False)
        if per_model is not None:
            if not isinstance(per_model, dict):
                raise BadControl("per_model must be an object")
            state.per_model = {m: coerce_behaviour(b, allow_ok=False)
                               for m, b in per_model.items()}
        for k, v in clean.items():
            if v is None:
                state.defaults[k] = BASE_DEFAULTS[k]
            else:
                state.defaults[k] = v
    out = dict(BASE_DEFAULTS)
    out.update(state.defaults)
    out["per_model"] = state.per_model
    return out


def control_stats(state, req, body):
    out = state.stats.as_dict()
    out["now"] = time.time()
    n = int(req.query.get("recent", "100"))
    out["recent"] = [r.as_dict() for r in list(state.records)[-n:]] if n > 0 else []
    out["queued"] = {ep: len(q) for ep, q in state.scripts.items() if q}
    return out


def control_requests(state, req, body):
    ep = req.query.get("endpoint")
    since = int(req.query.get("since", "0"))
    bodies = req.query.get("bodies") in ("1", "true")
    out = []
    for r in state.records:
        if r.id <= since or (ep and r.endpoint != ep):
            continue
        d = r.as_dict()
        if bodies:
            d["body"] = state.bodies.get(r.id)
        out.append(d)
    return {"requests": out}


def control_reset(state, req, body):
    state.reset()
    return {"ok": True}


CONTROL = {("POST", "script"): control_script, ("GET", "defaults"): control_defaults,
           ("POST", "defaults"): control_defaults, ("GET", "stats"): control_stats,
           ("GET", "requests"): control_requests, ("POST", "reset"): control_reset,
           ("GET", "health"): lambda s, r, b: {"ok": True}}


# ---------------------------------------------------------------------------
# The server.

class App:
    def __init__(self, args, defaults, per_model):
        self.base = "/" + args.base_path.strip("/") if args.base_path.strip("/") else ""
        self.auth = not args.no_auth
        self.api_key = args.api_key
        self.max_body = args.max_body_bytes
        self.high_water = args.write_high_water
        self.verbose = args.verbose
        self.state = State(defaults, per_model, args.keep_requests)
        self.tasks = set()

    async def serve_conn(self, reader, writer):
        task = asyncio.current_task()
        self.tasks.add(task)
        st = self.state.stats
        st.connections_open += 1
        st.connections_total += 1
        writer.transport.set_write_buffer_limits(high=self.high_water,
                                                 low=self.high_water // 4)
        conn = Conn(self, reader, writer)
        try:
            while True:
                try:
                    req = await conn.read_request()
                except HttpError as e:
                    body = json.dumps(bad_request(str(e))).encode()
                    writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (
                                     e.status, http.HTTPStatus(e.status).phrase.encode(),
                                     len(body), body))
                    break
                if req is None or not await self.dispatch(conn, req):
                    break
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self.state.stats.connections_open -= 1
            self.tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def dispatch(self, conn, req):
        """Answers one request; returns whether to keep the connection."""
        if req.path.startswith("/_control/"):
            return await self.control(conn, req)
        rest = req.path[len(self.base):].strip("/") if req.path.startswith(self.base + "/") \
            else None
        endpoint = ENDPOINTS.get(rest)
        if endpoint is None or METHODS[endpoint] != req.method:
            endpoint = None
        rec = self.state.new_record(endpoint or "other", req)
        return await self.watched(conn, req, rec, endpoint)

    async def watched(self, conn, req, rec, endpoint):
        """Runs the handler as a task that the connection cancels as soon as
        the client goes away (Reader tells it), even while the answer sleeps
        (latency, token pacing, the timeout fault)."""
        st = self.state.stats
        st.in_flight += 1
        # The answer runs in the connection's own task (no task per
        # request); Conn.client_went_away cancels that task, and the
        # cancellation is taken back here.
        task = asyncio.current_task()
        conn.answering, conn.cut_off = task, False
        if conn.gone:
            # Gone before the answer started: it gets its first step.
            asyncio.get_running_loop().call_soon(conn.client_went_away)
        try:
            keep = await self.answer(conn, req, rec, endpoint)
        except (ConnectionError, OSError):
            self.client_gone(rec)
            keep = False
        except asyncio.CancelledError:
            if not conn.cut_off or task.cancelling() > 1:
                raise
            task.uncancel()
            self.client_gone(rec)
            keep = False
        finally:
            conn.answering = None
            st.in_flight -= 1
        if self.verbose:
            print(f"{rec.method} {rec.path} {rec.status} fault={rec.fault} "
                  f"tokens={rec.tokens_sent} client_closed={rec.client_closed}",
                  file=sys.stderr, flush=True)
        return keep

    def client_gone(self, rec):
        if rec.completed or rec.server_closed:
            return
        rec.client_closed = True
        rec.closed_at = time.time()
        self.state.stats.client_closed_early += 1

    async def answer(self, conn, req, rec, endpoint):
        def resp_factory(beh):
            return Responder(self, conn, rec, beh, req)

        try:
            if endpoint is None:
                raise Reject(404, bad_request(f"Invalid URL ({req.method} {req.path})"))
            if self.auth:
                authz = req.headers.get("authorization", "")
                token = authz[7:].strip() if authz[:7].lower() == "bearer " else ""
                if not token:
                    s, b = ERRORS["missing_api_key"]
                    raise Reject(s, {"error": b})
                if self.api_key is not None and token != self.api_key:
                    s, b = ERRORS["invalid_api_key"]
                    raise Reject(s, {"error": b})
            return await HANDLERS[endpoint](self, conn, req, rec, resp_factory)
        except Reject as e:
            resp = resp_factory(Behaviour(BASE_DEFAULTS))
            await resp.json(e.status, e.body)
            return resp.keep
        except (ConnectionError, OSError, asyncio.CancelledError):
            raise
        except Exception:  # noqa: BLE001 - a bug in the fake: say so, answer 500
            traceback.print_exc(file=sys.stderr)
            if rec.first_byte_at is None:
                resp = resp_factory(Behaviour(BASE_DEFAULTS))
                await resp.json(500, {"error": {"message": "fake_openai internal error",
                                                "type": "server_error", "param": None,
                                                "code": None}})
            return False

    async def control(self, conn, req):
        fn = CONTROL.get((req.method, req.path[len("/_control/"):].strip("/")))
        status, out = 200, None
        try:
            if fn is None:
                status, out = 404, bad_request(f"unknown control {req.method} {req.path}")
            else:
                body = json.loads(req.body) if req.body.strip() else None
                out = fn(self.state, req, body)
        except (ValueError, BadControl) as e:
            status, out = 400, bad_request(str(e))
        data = json.dumps(out).encode()
        conn.writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\nconnection: %s\r\n\r\n%s" % (
                              status, http.HTTPStatus(status).phrase.encode(), len(data),
                              b"keep-alive" if req.keep_alive else b"close", data))
        await conn.writer.drain()
        return req.keep_alive


def raise_fd_limit():
    """Thousands of streams need thousands of descriptors."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def parse_args(argv):
    p = argparse.ArgumentParser(description="Fake OpenAI-compatible provider (see README.md).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--base-path", default="/v1")
    p.add_argument("--no-auth", action="store_true", help="do not require a Bearer token")
    p.add_argument("--api-key", help="require exactly this Bearer token")
    p.add_argument("--max-body-bytes", type=int, default=64 << 20)
    p.add_argument("--write-high-water", type=int, default=64 * 1024,
                   help="bytes buffered per connection before a write waits (drain)")
    p.add_argument("--keep-requests", type=int, default=20000,
                   help="per-request records kept for /_control/stats and /requests")
    p.add_argument("--verbose", action="store_true", help="one stderr line per request")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="exit when the parent process goes away (so a killed test "
                        "leaves no fake behind)")
    p.add_argument("--fields-markdown", action="store_true",
                   help="print the behaviour fields as a Markdown table and exit")
    p.add_argument("--defaults", default=None,
                   help="JSON object of behaviour defaults (may include per_model)")
    for name, typ, default, help_ in FIELDS:
        flag = "--" + name.replace("_", "-")
        if typ is bool:
            p.add_argument(flag, dest=name, action="store_true", default=None, help=help_)
        elif typ != "json":
            p.add_argument(flag, dest=name, type=typ, default=None,
                           help=f"{help_} (default: {default})")
    return p.parse_args(argv)


def build_defaults(args):
    defaults, per_model = {}, {}
    if args.defaults:
        obj = json.loads(args.defaults)
        per_model = {m: coerce_behaviour(b, allow_ok=False)
                     for m, b in (obj.pop("per_model", None) or {}).items()}
        defaults.update(coerce_behaviour(obj, allow_ok=False))
    for name, typ, _, _ in FIELDS:
        if typ != "json" and getattr(args, name) is not None:
            defaults[name] = coerce_field(name, getattr(args, name))
    return defaults, per_model


async def watch_parent(ppid, stop):
    while os.getppid() == ppid:
        await asyncio.sleep(0.5)
    stop.set()


def fields_markdown():
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, typ, default, help_ in FIELDS:
        t = typ if isinstance(typ, str) else typ.__name__
        rows.append(f"| `{name}` | {t} | `{json.dumps(default)}` | {help_} |")
    return "\n".join(rows)


async def amain(args):
    try:
        defaults, per_model = build_defaults(args)
    except (ValueError, BadControl) as e:
        print(f"fake_openai: bad defaults: {e}", file=sys.stderr)
        return 2
    app = App(args, defaults, per_model)
    loop = asyncio.get_running_loop()

    def protocol():
        reader = Reader(limit=READER_BUFFER // 2, loop=loop)
        return asyncio.StreamReaderProtocol(reader, app.serve_conn, loop=loop)

    server = await loop.create_server(protocol, args.host, args.port, backlog=4096)
    host, port = server.sockets[0].getsockname()[:2]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_with_parent:
        asyncio.ensure_future(watch_parent(os.getppid(), stop))
    print(f"fake_openai listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()
    for t in list(app.tasks):
        t.cancel()
    await asyncio.gather(*app.tasks, return_exceptions=True)
    await server.wait_closed()
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.fields_markdown:
        print(fields_markdown())
        return
    raise_fd_limit()
    sys.exit(asyncio.run(amain(args)))


# ---------------------------------------------------------------------------
# Test-side helper: start the fake as a child process and drive its control
# API. Usage from tests/e2e: sys.path.insert(0, ROOT + "/tests/fakes"), then
#     fake = FakeOpenAI().start(); fake.script([{"status": 429}, {"ok": True}])
#     ... REELD_OPENAI_BASE_URL=fake.url ...; fake.stop()

class FakeOpenAI:
    """A fake_openai child process on a free loopback port."""

    def __init__(self, *args, python=None):
        self.args = list(args)
        self.python = python or sys.executable or "python3"
        self.proc = None
        self.port = None
        self.errf = tempfile.TemporaryFile(mode="w+")

    @property
    def url(self):
        """The base URL an OpenAI client is given (ends with /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout=15):
        import select
        self.proc = subprocess.Popen([self.python, os.path.abspath(__file__), "--port", "0",
                                      "--host", "127.0.0.1", "--exit-with-parent", *self.args],
                                     stdout=subprocess.PIPE, stderr=self.errf, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        m = re.match(r"fake_openai listening on [\d.]+:(\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"fake_openai did not start: {line!r} {self.stderr()[-2000:]}")
        self.port = int(m.group(1))
        return self

    def stderr(self):
        self.errf.flush()
        self.errf.seek(0)
        return self.errf.read()

    def stop(self, timeout=10):
        """SIGTERM, then wait; returns the exit status."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def control(self, method, path, body=None):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = json.dumps(body) if body is not None else None
        c.request(method, "/_control/" + path, body=data,
                  headers={"content-type": "application/json"} if data else {})
        r = c.getresponse()
        out = json.loads(r.read() or b"null")
        c.close()
        if r.status != 200:
            raise RuntimeError(f"control {path}: {r.status} {out}")
        return out

    def script(self, behaviours, endpoint=None, append=False):
        body = {"endpoint": endpoint, "behaviours": behaviours} if endpoint else behaviours
        return self.control("POST", "script" + ("?append=1" if append else ""), body)

    def defaults(self, **fields):
        return self.control("POST", "defaults", fields)

    def reset(self):
        return self.control("POST", "reset")

    def stats(self, recent=100):
        return self.control("GET", f"stats?recent={recent}")

    def requests(self, endpoint=None, bodies=False, since=0):
        q = f"requests?since={since}&bodies={1 if bodies else 0}"
        if endpoint:
            q += f"&endpoint={endpoint}"
        return self.control("GET", q)["requests"]

    def wait_for(self, pred, timeout=10.0, interval=0.02):
        """Polls stats until pred(stats) is true; returns those stats."""
        deadline = time.time() + timeout
        while True:
            s = self.stats(recent=1000)
            if pred(s):
                return s
            if time.time() > deadline:
                raise TimeoutError(f"fake_openai: condition not met; stats {s}")
            time.sleep(interval)


if __name__ == "__main__":
    main()
