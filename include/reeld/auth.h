/* Who is calling, in which organization, as what (SPEC section 6).
 *
 * auth_request verifies the bearer JWT (RS256/ES256 through jwt.h, keys
 * from the dev key under the data dir, a JWKS file, or a JWKS URL fetched
 * and cached, refetched on an unknown kid at most once every 10 s),
 * mirrors the user and any verified organization claims into the
 * database on first sight, and resolves the organization context: token
 * claims (Clerk v1 org_id/org_role or v2 o.id/o.rol), else the X-Org-Id
 * header checked against memberships, else the user's only membership.
 *
 * On success the callback runs with the context (valid as long as the
 * request). On failure the request is answered here (401, 403, 400, 503)
 * and the callback never runs. */
#ifndef REELD_AUTH_H
#define REELD_AUTH_H

#include <stddef.h>

struct event_base;
struct fetch;
struct db_pool;
struct http_req;
struct jwt_signer;

#define AUTH_DEV_ISSUER "reeld-dev"

struct auth;

struct auth_ctx {
    char user_id[37];
    const char *sub;
    const char *email, *name; /* from the token, or NULL */
    char org_id[37];          /* "" when the caller has no organization */
    int admin;                /* role in org_id */
};

struct auth *auth_new(struct event_base *base, struct fetch *f, struct db_pool *db, char *err,
                      size_t errlen);
void auth_free(struct auth *a);

/* The dev signing key, created under data_dir on first use. */
struct jwt_signer *auth_dev_signer(const char *data_dir, char *err, size_t errlen);

typedef void (*auth_cb)(struct http_req *r, const struct auth_ctx *ctx);

/* need_org: answer 403 when no organization context can be resolved. */
void auth_request(struct http_req *r, int need_org, auth_cb cb);

/* Forget cached identities (after a membership or user change). */
void auth_cache_clear(void);

#endif
