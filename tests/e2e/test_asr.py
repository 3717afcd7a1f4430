"""`reeld asr`, the local recognizer the local transcription provider runs
as a child: raw 16 kHz s16le mono PCM on stdin, JSON words with timestamps
on stdout. Speech is synthesized with flite (its slt voice is recognized
well by pocketsphinx's US English model; espeak-ng's formant voice is not)
and converted with ffmpeg, exactly as the provider feeds the recognizer.
No database is needed."""
import json
import os
import shutil
import subprocess
import tempfile

from harness import BIN, done, eq, run_all

RATE = 16000
SENTENCE = ("the quick brown fox jumps over the lazy dog. "
            "today we deploy the billing service to production.")
EXPECTED = ["quick", "brown", "fox", "lazy", "dog", "deploy", "billing", "service",
            "production"]
FILLERS = {"<s>", "</s>", "<sil>", "[NOISE]", "(NULL)", "++NOISE++", "++GARBAGE++"}

_tmp = tempfile.mkdtemp(prefix="reeld-asr-")
_pcm = {}  # synthesized audio and its transcript, made once


def _speech_pcm():
    """The sentence as raw PCM (cached: synthesized once)."""
    if "speech" not in _pcm:
        if not shutil.which("flite") or not shutil.which("ffmpeg"):
            raise RuntimeError("flite and ffmpeg are needed (scripts/deps.sh TEST_PKGS)")
        wav = os.path.join(_tmp, "speech.wav")
        subprocess.run(["flite", "-voice", "slt", "-t", SENTENCE, "-o", wav], check=True,
                       capture_output=True, timeout=60)
        _pcm["speech"] = _to_pcm(["-i", wav])
    return _pcm["speech"]


def _to_pcm(inputs):
    out = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", *inputs, "-f", "s16le",
                          "-ac", "1", "-ar", str(RATE), "-"],
                         check=True, capture_output=True, timeout=60)
    return out.stdout


def _asr(data, env=None, args=()):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([BIN, "asr", *args], input=data, capture_output=True, timeout=120,
                          env=e)


def _ok(data):
    r = _asr(data)
    if r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr.decode(errors='replace')[-300:]}")
    doc = json.loads(r.stdout)
    eq(sorted(doc.keys()), ["language", "text", "words"], "keys")
    eq(doc["language"], "en", "language")
    return doc


def _check_times(words, duration_ms):
    prev_end = 0
    for w in words:
        s, e = w["start_ms"], w["end_ms"]
        if not (isinstance(s, int) and isinstance(e, int)):
            raise AssertionError(f"non-integer times in {w}")
        if s < prev_end or e < s or e > duration_ms:
            raise AssertionError(f"{w} after end {prev_end} (audio {duration_ms} ms)")
        if not w["w"] or w["w"] in FILLERS or "(" in w["w"]:
            raise AssertionError(f"filler or marked word {w['w']!r}")
        prev_end = e


def _speech_doc():
    if "doc" not in _pcm:
        _pcm["doc"] = _ok(_speech_pcm())
    return _pcm["doc"]


def synthesized_speech_is_recognized_with_the_expected_words():
    doc = _speech_doc()
    words = [w["w"] for w in doc["words"]]
    if len(words) < 3:
        raise AssertionError(f"only {words}")
    hits = [w for w in EXPECTED if w in words]
    if len(hits) < 2:
        raise AssertionError(f"recognized {doc['text']!r}, expected words hit: {hits}")
    eq(doc["text"], " ".join(words), "text is the words joined")


def word_timestamps_are_ordered_and_within_the_audio():
    pcm = _speech_pcm()
    doc = _speech_doc()
    _check_times(doc["words"], len(pcm) // 2 * 1000 // RATE)


def long_input_cut_into_utterances_keeps_times_on_the_audio_clock():
    # Three copies (about 18 s) exceed the 10 s point after which the
    # recognizer ends an utterance at a pause: times must stay monotonic,
    # and each copy's words must land in that copy's stretch of time.
    one = _speech_pcm()
    doc = _ok(one * 3)
    one_ms = len(one) // 2 * 1000 // RATE
    _check_times(doc["words"], 3 * one_ms)
    for k in range(3):
        lo, hi = k * one_ms, (k + 1) * one_ms
        inside = [w["w"] for w in doc["words"] if lo <= w["start_ms"] < hi]
        hits = [w for w in EXPECTED if w in inside]
        if len(hits) < 2:
            raise AssertionError(f"copy {k} ({lo}-{hi} ms) has {inside}")


def silence_gives_no_words():
    pcm = _to_pcm(["-f", "lavfi", "-i", f"anullsrc=r={RATE}:cl=mono", "-t", "2"])
    eq(len(pcm), 2 * RATE * 2, "pcm bytes")
    doc = _ok(pcm)
    eq(doc["words"], [], "words")
    eq(doc["text"], "", "text")


def random_bytes_with_an_odd_tail_do_not_crash_it():
    doc = _ok(os.urandom(2 * RATE + 1))
    _check_times(doc["words"], 1000)


def empty_input_gives_empty_text():
    doc = _ok(b"")
    eq(doc["text"], "", "text")
    eq(doc["words"], [], "words")


def a_missing_model_fails_with_one_line_and_no_output():
    r = _asr(b"\0\0" * 1600, env={"REELD_ASR_MODEL_DIR": os.path.join(_tmp, "nomodel")})
    eq(r.returncode, 1, "exit")
    eq(r.stdout, b"", "stdout")
    lines = r.stderr.decode().strip().splitlines()
    eq(len(lines), 1, f"stderr lines {lines}")
    if "model" not in lines[0]:
        raise AssertionError(lines[0])


def an_unexpected_argument_is_refused():
    r = _asr(b"", args=("--bogus",))
    eq(r.returncode, 1, "exit")
    eq(r.stdout, b"", "stdout")


try:
    run_all(globals())
finally:
    shutil.rmtree(_tmp, ignore_errors=True)
done()
