/* The local recognizer (see include/reeld/asr.h): PCM on stdin, words with
 * timestamps as JSON on stdout, decoded by pocketsphinx in bounded
 * utterances. Runs as its own process; it uses no loop, config or DB. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <pocketsphinx.h>
#include <sphinxbase/err.h>

#include "reeld/asr.h"
#include "reeld/util.h"

#define ASR_RATE 16000
#define ASR_SAMPLES_PER_MS (ASR_RATE / 1000)
#define ASR_FRAME 160 /* 10 ms, the decoder's frame */
#define ASR_BLOCK 4096
/* An utterance is cut at the first pause after ASR_UTT_SOFT, and
 * unconditionally at ASR_UTT_HARD: the decoder's search state grows with
 * the utterance, so this is what bounds memory on hour-long input. */
#define ASR_UTT_SOFT ((int64_t)10 * ASR_RATE)
#define ASR_UTT_HARD ((int64_t)30 * ASR_RATE)
/* A pause: this many consecutive quiet frames (300 ms). */
#define ASR_PAUSE_FRAMES 30
/* A frame is quiet below a quarter of the utterance's mean level, or
 * below an absolute floor (digital silence, hum). */
#define ASR_QUIET_FLOOR 100
#define ASR_DEFAULT_MODEL "/usr/share/pocketsphinx/model/en-us"

struct asr {
    ps_decoder_t *ps;
    cmd_ln_t *cfg;
    int in_utt;
    int64_t utt_start;   /* sample index where the current utterance began */
    int64_t utt_len;     /* samples fed to it */
    int64_t level_sum;   /* sum of per-frame mean |amplitude| in the utterance */
    int64_t level_n;     /* frames counted in level_sum */
    int quiet_run;       /* consecutive quiet frames */
    int64_t total;       /* samples read so far */
    int64_t frame_base;  /* decoder frames in the utterances before this one */
    int64_t last_end_ms; /* end of the last word emitted */
    size_t nwords;
    struct evbuffer *text;
    struct evbuffer *words;
};

static void asr_fail(const char *msg)
{
    fprintf(stderr, "reeld asr: %s\n", msg);
}

static int asr_path(char *out, size_t n, const char *dir, const char *name)
{
    int len = snprintf(out, n, "%s/%s", dir, name);
    if (len < 0 || (size_t)len >= n) return -1;
    return access(out, R_OK);
}

static int asr_open(struct asr *a)
{
    const char *dir = getenv("REELD_ASR_MODEL_DIR");
    if (!dir || !*dir) dir = ASR_DEFAULT_MODEL;
    char hmm[PATH_MAX], lm[PATH_MAX], dict[PATH_MAX];
    if (asr_path(hmm, sizeof hmm, dir, "en-us") != 0 ||
        asr_path(lm, sizeof lm, dir, "en-us.lm.bin") != 0 ||
        asr_path(dict, sizeof dict, dir, "cmudict-en-us.dict") != 0) {
        fprintf(stderr,
                "reeld asr: model not found in %s (en-us/, en-us.lm.bin, "
                "cmudict-en-us.dict)\n",
                dir);
        return -1;
    }
    /* The library logs its whole configuration and per-utterance
     * statistics; the caller keeps only a bounded stderr tail for errors,
     * so it stays quiet and this file reports failures itself. */
    err_set_logfp(NULL);
    /* remove_silence off: the front end would drop silent frames and the
     * frame numbers would no longer be times. */
    a->cfg = cmd_ln_init(NULL, ps_args(), TRUE, "-hmm", hmm, "-lm", lm, "-dict", dict, "-samprate",
                         "16000", "-remove_silence", "no", NULL);
    if (!a->cfg) {
        asr_fail("bad decoder configuration");
        return -1;
    }
    a->ps = ps_init(a->cfg);
    if (!a->ps) {
        asr_fail("cannot load the recognition model");
        return -1;
    }
    return 0;
}

/* "word(2)" -> "word"; fillers and silence ("<s>", "<sil>", "[NOISE]",
 * "(NULL)", "++NOISE++") -> 0. */
static size_t asr_word_len(const char *w)
{
    if (!w || !*w || strchr("<[(+", w[0])) return 0;
    size_t n = strlen(w);
    if (n > 0 && w[n - 1] == ')') {
        const char *p = strrchr(w, '(');
        if (p && p > w) n = (size_t)(p - w);
    }
    return n;
}

/* Debian's pocketsphinx (5prealpha) numbers segment frames from the
 * decoder's creation, not from the utterance: the frames of the earlier
 * utterances (ps_get_n_frames after each) are subtracted, and the result
 * anchored to the utterance's first sample, so that rounding at the cuts
 * never accumulates over a long recording. */
static void asr_collect(struct asr *a)
{
    int64_t base_ms = a->utt_start / ASR_SAMPLES_PER_MS;
    int64_t total_ms = a->total / ASR_SAMPLES_PER_MS;
    for (ps_seg_t *seg = ps_seg_iter(a->ps); seg; seg = ps_seg_next(seg)) {
        const char *w = ps_seg_word(seg);
        size_t n = asr_word_len(w);
        if (n == 0) continue;
        int sf = 0, ef = 0;
        ps_seg_frames(seg, &sf, &ef);
        int64_t start = base_ms + ((int64_t)sf - a->frame_base) * 10;
        int64_t end = base_ms + ((int64_t)ef + 1 - a->frame_base) * 10;
        if (start < base_ms) start = base_ms;
        if (start < a->last_end_ms) start = a->last_end_ms;
        if (end > total_ms) end = total_ms;
        if (end < start) end = start;
        a->last_end_ms = end;
        if (a->nwords > 0) {
            evbuffer_add(a->text, " ", 1);
            evbuffer_add(a->words, ",", 1);
        }
        evbuffer_add(a->text, w, n);
        evbuffer_add(a->words, "{\"w\":", 5);
        util_json_strn(a->words, w, n);
        evbuffer_add_printf(a->words, ",\"start_ms\":%lld,\"end_ms\":%lld}", (long long)start,
                            (long long)end);
        a->nwords++;
    }
}

static int asr_feed(struct asr *a, const int16_t *s, size_t n)
{
    if (n == 0) return 0;
    if (!a->in_utt) {
        if (ps_start_utt(a->ps) < 0) return -1;
        a->in_utt = 1;
        a->utt_start = a->total;
    }
    if (ps_process_raw(a->ps, s, n, FALSE, FALSE) < 0) return -1;
    a->utt_len += (int64_t)n;
    a->total += (int64_t)n;
    return 0;
}

static int asr_end(struct asr *a)
{
    if (!a->in_utt) return 0;
    a->in_utt = 0;
    /* The next utterance's level statistics start with the frames that
     * follow the cut, which asr_frame_cut sees before they are fed. */
    a->utt_len = a->level_sum = a->level_n = 0;
    a->quiet_run = 0;
    if (ps_end_utt(a->ps) < 0) return -1;
    asr_collect(a);
    int n = ps_get_n_frames(a->ps);
    if (n > 0) a->frame_base += n;
    return 0;
}

/* 1 when the utterance should end after this frame. */
static int asr_frame_cut(struct asr *a, const int16_t *s, size_t n, int64_t utt_len)
{
    int64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += s[i] < 0 ? -(int64_t)s[i] : s[i];
    int64_t level = sum / (int64_t)n;
    int64_t mean = a->level_n ? a->level_sum / a->level_n : 0;
    int quiet = level < ASR_QUIET_FLOOR || level * 4 < mean;
    a->quiet_run = quiet ? a->quiet_run + 1 : 0;
    a->level_sum += level;
    a->level_n++;
    if (utt_len >= ASR_UTT_HARD) return 1;
    return utt_len >= ASR_UTT_SOFT && a->quiet_run >= ASR_PAUSE_FRAMES;
}

/* Feeds one block, ending the utterance where asr_frame_cut says. */
static int asr_block(struct asr *a, const int16_t *s, size_t n)
{
    size_t fed = 0;
    for (size_t i = 0; i < n; i += ASR_FRAME) {
        size_t fn = n - i < ASR_FRAME ? n - i : ASR_FRAME;
        int64_t len = (a->in_utt ? a->utt_len : 0) + (int64_t)(i - fed + fn);
        if (!asr_frame_cut(a, s + i, fn, len)) continue;
        if (asr_feed(a, s + fed, i + fn - fed) != 0 || asr_end(a) != 0) return -1;
        fed = i + fn;
    }
    return asr_feed(a, s + fed, n - fed);
}

static int asr_run(struct asr *a)
{
    unsigned char raw[ASR_BLOCK * 2];
    int16_t pcm[ASR_BLOCK];
    size_t have = 0;
    for (;;) {
        ssize_t r = read(STDIN_FILENO, raw + have, sizeof raw - have);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            fprintf(stderr, "reeld asr: read: %s\n", strerror(errno));
            return -1;
        }
        have += (size_t)r;
        if (r > 0 && have < sizeof raw) continue;
        size_t n = have / 2;
        for (size_t i = 0; i < n; i++)
            pcm[i] = (int16_t)(uint16_t)(raw[2 * i] | (unsigned)raw[2 * i + 1] << 8);
        if (asr_block(a, pcm, n) != 0) {
            asr_fail("decoder error");
            return -1;
        }
        if (r == 0) break;
        have = 0;
    }
    if (asr_end(a) != 0) {
        asr_fail("decoder error");
        return -1;
    }
    return 0;
}

static int asr_write(struct asr *a)
{
    struct evbuffer *out = evbuffer_new();
    if (!out) return -1;
    size_t tn = evbuffer_get_length(a->text);
    evbuffer_add(out, "{\"text\":", 8);
    util_json_strn(out, tn ? (const char *)evbuffer_pullup(a->text, -1) : "", tn);
    evbuffer_add(out, ",\"language\":\"en\",\"words\":[", 26);
    evbuffer_add_buffer(out, a->words);
    evbuffer_add(out, "]}\n", 3);
    int rc = 0;
    while (evbuffer_get_length(out) > 0) {
        int w = evbuffer_write(out, STDOUT_FILENO);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            rc = -1;
            break;
        }
    }
    evbuffer_free(out);
    return rc;
}

int asr_main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1) {
        asr_fail("takes no arguments (PCM s16le 16 kHz mono on stdin, JSON on stdout)");
        return 1;
    }
    struct asr a;
    memset(&a, 0, sizeof a);
    a.text = evbuffer_new();
    a.words = evbuffer_new();
    int rc = 1;
    if (!a.text || !a.words)
        asr_fail("out of memory");
    else if (asr_open(&a) == 0 && asr_run(&a) == 0) {
        if (asr_write(&a) == 0)
            rc = 0;
        else
            fprintf(stderr, "reeld asr: write: %s\n", strerror(errno));
    }
    if (a.ps) ps_free(a.ps);
    if (a.cfg) cmd_ln_free_r(a.cfg);
    if (a.text) evbuffer_free(a.text);
    if (a.words) evbuffer_free(a.words);
    return rc;
}
