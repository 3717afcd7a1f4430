/* Token buckets by key (ratelimit.h): a chained hash table; full buckets
 * are swept out when the table grows. */
#include "reeld/ratelimit.h"

#include <stdlib.h>
#include <string.h>

#define RL_SLOTS 1024
#define RL_SWEEP_AT 4096 /* entries */

struct bucket {
    struct bucket *next;
    char key[64];
    double tokens;
    int64_t at_ms; /* when tokens was computed */
};

struct ratelimit {
    double cap, per_ms; /* tokens, refill rate */
    struct bucket *slot[RL_SLOTS];
    int n;
};

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % RL_SLOTS;
}

static double level(const struct ratelimit *rl, const struct bucket *b, int64_t now)
{
    double t = b->tokens + (double)(now - b->at_ms) * rl->per_ms;
    return t > rl->cap ? rl->cap : t;
}

struct ratelimit *ratelimit_new(int count, int window_s)
{
    if (count < 1 || window_s < 1) return NULL;
    struct ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl) return NULL;
    rl->cap = count;
    rl->per_ms = (double)count / ((double)window_s * 1000.0);
    return rl;
}

void ratelimit_free(struct ratelimit *rl)
{
    if (!rl) return;
    for (int i = 0; i < RL_SLOTS; i++) {
        while (rl->slot[i]) {
            struct bucket *b = rl->slot[i];
            rl->slot[i] = b->next;
            free(b);
        }
    }
    free(rl);
}

/* Buckets that refilled completely are the same as no bucket. */
static void sweep(struct ratelimit *rl, int64_t now)
{
    for (int i = 0; i < RL_SLOTS; i++) {
        struct bucket **pp = &rl->slot[i];
        while (*pp) {
            if (level(rl, *pp, now) >= rl->cap) {
                struct bucket *b = *pp;
                *pp = b->next;
                free(b);
                rl->n--;
            } else {
                pp = &(*pp)->next;
            }
        }
    }
}

int64_t ratelimit_take(struct ratelimit *rl, const char *key, int64_t now_ms)
{
    if (!rl || !key) return 0;
    char k[64];
    size_t len = strlen(key);
    if (len > sizeof k - 1) len = sizeof k - 1;
    memcpy(k, key, len);
    k[len] = '\0';
    unsigned h = hash(k);
    struct bucket *b = rl->slot[h];
    while (b && strcmp(b->key, k) != 0)
        b = b->next;
    if (!b) {
        if (rl->n >= RL_SWEEP_AT) sweep(rl, now_ms);
        b = calloc(1, sizeof *b);
        if (!b) return 0; /* out of memory: do not refuse service for it */
        memcpy(b->key, k, len + 1);
        b->tokens = rl->cap;
        b->at_ms = now_ms;
        b->next = rl->slot[h];
        rl->slot[h] = b;
        rl->n++;
    }
    double t = level(rl, b, now_ms);
    b->at_ms = now_ms;
    if (t >= 1.0) {
        b->tokens = t - 1.0;
        return 0;
    }
    b->tokens = t;
    int64_t wait = (int64_t)((1.0 - t) / rl->per_ms) + 1;
    return wait > 0 ? wait : 1;
}
