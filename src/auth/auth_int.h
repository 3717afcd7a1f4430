/* Private to src/auth: the key store shared by keys.c and tenancy.c. */
#ifndef REELD_AUTH_INT_H
#define REELD_AUTH_INT_H

#include <stdint.h>

#include "reeld/auth.h"
#include "reeld/jwt.h"

struct auth_waiter;

struct auth {
    struct event_base *base;
    struct fetch *fetch;
    struct db_pool *db;
    struct jwt_keyset *keys; /* NULL until the first JWKS load */
    struct fetch_req *inflight;
    int64_t last_kid_refresh_ms; /* last refetch for an unknown kid; 0 = never */
    int64_t loaded_ms;
    struct auth_waiter *waiters; /* requests waiting for a JWKS fetch */
    struct jwt_opts opts;
};

/* keys.c: run fn(r) once keys are usable (now, or after the fetch in
 * flight); force asks for a refetch (unknown kid), rate-limited. When the
 * fetch fails and no keys exist, fn runs with ok = 0. */
void auth_keys_when_ready(struct auth *a, struct http_req *r, int force,
                          void (*fn)(struct http_req *r, int ok));

#endif
