/* The configuration table; see include/reeld/config.h. */
#include "reeld/config.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "reeld/log.h"
#include "reeld/util.h"

struct config cfg;

enum ctype { C_STR, C_INT, C_I64, C_ENUM, C_LISTEN, C_RATE, C_URL, C_SECRET };

struct cvar {
    const char *name;
    enum ctype type;
    const char *def; /* NULL: unset */
    size_t off;      /* into struct config; C_LISTEN and C_RATE fill two fields */
    long long min, max;
    const char *choices; /* C_ENUM: space-separated */
    const char *help;
};

#define F(x) offsetof(struct config, x)
static const struct cvar vars[] = {
    {"REELD_LISTEN", C_LISTEN, "127.0.0.1:8080", F(listen_host), 0, 0, NULL,
     "address:port to serve"},
    {"REELD_PUBLIC_URL", C_URL, "http://127.0.0.1:8080", F(public_url), 0, 0, NULL,
     "base of absolute URLs it hands out"},
    {"REELD_DATA_DIR", C_STR, "./var", F(data_dir), 0, 0, NULL,
     "local storage, dev keys, private cluster"},
    {"DATABASE_URL", C_STR, NULL, F(database_url), 0, 0, NULL,
     "libpq URI or conninfo (default: the private cluster under the data dir)"},
    {"REELD_DB_POOL", C_INT, "4", F(db_pool), 1, 64, NULL, "query connections"},
    {"REELD_AUTH", C_ENUM, "dev", F(auth), 0, 0, "dev jwks",
     "`dev` (local signing key, `reeld token`) or `jwks`"},
    {"REELD_JWKS_URL", C_URL, NULL, F(jwks_url), 0, 0, NULL,
     "JWKS URL for `jwks` auth (cached; refetched on unknown kid, rate-limited)"},
    {"REELD_JWKS_FILE", C_STR, NULL, F(jwks_file), 0, 0, NULL, "JWKS file for `jwks` auth"},
    {"REELD_JWT_ISSUER", C_STR, NULL, F(jwt_issuer), 0, 0, NULL, "required `iss` in `jwks` mode"},
    {"REELD_JWT_AUDIENCE", C_STR, NULL, F(jwt_audience), 0, 0, NULL, "required `aud` when set"},
    {"REELD_JWT_AZP", C_STR, NULL, F(jwt_azp), 0, 0, NULL,
     "comma list of allowed `azp` (Clerk) when set"},
    {"REELD_TRANSCRIBER", C_ENUM, "local", F(transcriber), 0, 0, "local assemblyai deepgram openai",
     "transcription provider"},
    {"REELD_LLM", C_ENUM, "local", F(llm), 0, 0, "local openai",
     "`local` (extractive, no model) or `openai` (any OpenAI-compatible chat API)"},
    {"REELD_EMBEDDER", C_ENUM, "local", F(embedder), 0, 0, "local openai",
     "`local` (hashed lexical features) or `openai`"},
    {"OPENAI_API_KEY", C_SECRET, NULL, F(openai_api_key), 0, 0, NULL, "OpenAI-compatible API key"},
    {"OPENAI_BASE_URL", C_URL, "https://api.openai.com/v1", F(openai_base_url), 0, 0, NULL,
     "OpenAI-compatible base URL"},
    {"REELD_LLM_MODEL", C_STR, "gpt-5-nano", F(llm_model), 0, 0, NULL, "chat model"},
    {"REELD_LLM_FALLBACK_MODEL", C_STR, "gpt-4o-mini", F(llm_fallback_model), 0, 0, NULL,
     "chat model tried after repeated failure"},
    {"REELD_EMBED_MODEL", C_STR, "text-embedding-3-small", F(embed_model), 0, 0, NULL,
     "embedding model"},
    {"REELD_EMBED_DIM", C_INT, "1536", F(embed_dim), 8, 8192, NULL, "embedding dimensions"},
    {"ASSEMBLYAI_API_KEY", C_SECRET, NULL, F(assemblyai_api_key), 0, 0, NULL, "AssemblyAI key"},
    {"ASSEMBLYAI_BASE_URL", C_URL, "https://api.assemblyai.com", F(assemblyai_base_url), 0, 0, NULL,
     "AssemblyAI base URL"},
    {"DEEPGRAM_API_KEY", C_SECRET, NULL, F(deepgram_api_key), 0, 0, NULL, "Deepgram key"},
    {"DEEPGRAM_BASE_URL", C_URL, "https://api.deepgram.com", F(deepgram_base_url), 0, 0, NULL,
     "Deepgram base URL"},
    {"REELD_TRANSCRIPTION_WEBHOOK_SECRET", C_SECRET, NULL, F(transcription_webhook_secret), 0, 0,
     NULL, "shared secret of the transcription webhook (default: random per data dir)"},
    {"STRIPE_WEBHOOK_SECRET", C_SECRET, NULL, F(stripe_webhook_secret), 0, 0, NULL,
     "`whsec_…`; the Stripe webhook answers 503 without it"},
    {"CLERK_WEBHOOK_SECRET", C_SECRET, NULL, F(clerk_webhook_secret), 0, 0, NULL,
     "`whsec_…` (Svix); the Clerk webhook answers 503 without it"},
    {"REELD_STORAGE", C_ENUM, "local", F(storage), 0, 0, "local s3",
     "`local` (under data dir) or `s3`"},
    {"S3_ENDPOINT", C_URL, NULL, F(s3_endpoint), 0, 0, NULL, "S3 or S3-compatible endpoint"},
    {"S3_BUCKET", C_STR, NULL, F(s3_bucket), 0, 0, NULL, "S3 bucket"},
    {"S3_REGION", C_STR, NULL, F(s3_region), 0, 0, NULL, "S3 region"},
    {"AWS_ACCESS_KEY_ID", C_SECRET, NULL, F(aws_access_key_id), 0, 0, NULL, "S3 access key"},
    {"AWS_SECRET_ACCESS_KEY", C_SECRET, NULL, F(aws_secret_access_key), 0, 0, NULL,
     "S3 secret key"},
    {"REELD_URL_SIGNING_KEY", C_SECRET, NULL, F(url_signing_key), 0, 0, NULL,
     "HMAC key of signed media URLs (default: random per data dir)"},
    {"REELD_CHAT_RATE", C_RATE, "5/10s", F(chat_rate_count), 1, 100000, NULL,
     "per-user chat query limit, COUNT/SECONDSs"},
    {"REELD_LOG", C_ENUM, "info", F(log_level), 0, 0, "debug info warn error",
     "log level; logs are JSON lines on stderr"},
    {"REELD_MAX_CONNS", C_INT, "4096", F(max_conns), 1, 1000000, NULL,
     "open client connections; beyond it new ones get 503 and are closed"},
    {"REELD_MAX_HEADER_BYTES", C_INT, "16384", F(max_header_bytes), 1024, 1048576, NULL,
     "request line + headers; beyond it 431"},
    {"REELD_MAX_JSON_BYTES", C_I64, "1048576", F(max_json_bytes), 1024, 1073741824, NULL,
     "buffered JSON request body; beyond it 413"},
    {"REELD_HEADER_TIMEOUT", C_INT, "10", F(header_timeout_s), 1, 3600, NULL,
     "seconds to receive a request's headers"},
    {"REELD_IDLE_TIMEOUT", C_INT, "60", F(idle_timeout_s), 1, 86400, NULL,
     "seconds a keep-alive connection may sit idle"},
    {"REELD_BODY_TIMEOUT", C_INT, "60", F(body_timeout_s), 1, 86400, NULL,
     "seconds without body progress before the request fails"},
    {"REELD_SSE_MAX_QUEUED", C_I64, "262144", F(sse_max_queued), 4096, 1073741824, NULL,
     "bytes queued to one SSE client before it is dropped"},
    {"REELD_SSE_HEARTBEAT_S", C_INT, "15", F(sse_heartbeat_s), 1, 3600, NULL,
     "seconds between SSE heartbeat comments"},
    {"REELD_JOB_LEASE_S", C_INT, "60", F(job_lease_s), 1, 3600, NULL,
     "pipeline job lease: a dead process's jobs are taken over after it"},
    {"REELD_JOB_MAX_ATTEMPTS", C_INT, "5", F(job_max_attempts), 1, 100, NULL,
     "runs of a pipeline stage before the recording ends `error`"},
    {"REELD_JOB_BACKOFF_MS", C_INT, "2000", F(job_backoff_ms), 1, 3600000, NULL,
     "first retry delay of a failed stage (doubles, with jitter, up to 10 min)"},
    {"REELD_STAGE_CONCURRENCY", C_INT, "0", F(stage_concurrency), 0, 1024, NULL,
     "jobs of one stage run at once in this process; 0: the provider's own limit"},
    {"REELD_WORKERS", C_ENUM, "on", F(workers), 0, 0, "on off",
     "`off`: serve the API only, run no pipeline stage in this process"},
    {"REELD_INDEX_BUDGET_MB", C_INT, "1024", F(index_budget_mb), 1, 1048576, NULL,
     "memory for the search index's vectors; idle organizations are evicted beyond it"},
    {"REELD_PROVIDER_TIMEOUT_S", C_INT, "300", F(provider_timeout_s), 1, 86400, NULL,
     "time limit of one provider call (a transcription child, a model request)"},
    {"REELD_TRANSCRIBE_MAX_BYTES", C_I64, "25000000", F(transcribe_max_bytes), 65536, 1073741824,
     NULL, "largest audio sent in one OpenAI transcription request; longer audio is split"},
    {"REELD_SHUTDOWN_GRACE", C_INT, "8", F(shutdown_grace_s), 1, 60, NULL,
     "seconds to finish in-flight requests on SIGTERM"},
    {"REELD_UPLOAD_SWEEP_S", C_INT, "60", F(upload_sweep_s), 1, 86400, NULL,
     "seconds between sweeps of expired uploads"},
};
#undef F

static int set_err(char *err, size_t errlen, const struct cvar *v, const char *val, const char *why)
{
    snprintf(err, errlen, "invalid %s=\"%s\": %s", v->name, val, why);
    return -1;
}

static int parse_one(const struct cvar *v, const char *val, char *err, size_t errlen)
{
    char *base = (char *)&cfg;
    long long n;
    switch (v->type) {
    case C_STR:
    case C_SECRET:
        *(char **)(base + v->off) = val ? strdup(val) : NULL;
        return 0;
    case C_URL:
        if (val && strncmp(val, "http://", 7) != 0 && strncmp(val, "https://", 8) != 0)
            return set_err(err, errlen, v, val, "expected an http:// or https:// URL");
        if (val) {
            char *s = strdup(val);
            size_t l = strlen(s);
            while (l > 0 && s[l - 1] == '/')
                s[--l] = '\0'; /* callers append paths */
            *(char **)(base + v->off) = s;
        } else {
            *(char **)(base + v->off) = NULL;
        }
        return 0;
    case C_INT:
    case C_I64:
        if (util_parse_ll(val, v->min, v->max, &n) != 0) {
            char why[96];
            snprintf(why, sizeof why, "expected an integer from %lld to %lld", v->min, v->max);
            return set_err(err, errlen, v, val, why);
        }
        if (v->type == C_INT)
            *(int *)(base + v->off) = (int)n;
        else
            *(int64_t *)(base + v->off) = n;
        return 0;
    case C_ENUM: {
        size_t l = strlen(val);
        const char *c = v->choices;
        while (*c) {
            size_t cl = strcspn(c, " ");
            if (cl == l && strncmp(c, val, l) == 0) {
                *(char **)(base + v->off) = strdup(val);
                return 0;
            }
            c += cl;
            while (*c == ' ')
                c++;
        }
        char why[128];
        snprintf(why, sizeof why, "expected one of: %s", v->choices);
        return set_err(err, errlen, v, val, why);
    }
    case C_LISTEN: {
        const char *colon = strrchr(val, ':');
        if (!colon || colon == val || util_parse_ll(colon + 1, 1, 65535, &n) != 0)
            return set_err(err, errlen, v, val, "expected ADDRESS:PORT");
        cfg.listen_host = strndup(val, (size_t)(colon - val));
        cfg.listen_port = (int)n;
        return 0;
    }
    case C_RATE: {
        /* COUNT/SECONDSs, e.g. 5/10s; the trailing s is optional */
        char num[32], win[32];
        const char *slash = strchr(val, '/');
        if (!slash || (size_t)(slash - val) >= sizeof num || strlen(slash + 1) >= sizeof win)
            return set_err(err, errlen, v, val, "expected COUNT/SECONDSs, e.g. 5/10s");
        memcpy(num, val, (size_t)(slash - val));
        num[slash - val] = '\0';
        strcpy(win, slash + 1);
        size_t wl = strlen(win);
        if (wl && win[wl - 1] == 's') win[wl - 1] = '\0';
        long long c, w;
        if (util_parse_ll(num, 1, 100000, &c) != 0 || util_parse_ll(win, 1, 86400, &w) != 0)
            return set_err(err, errlen, v, val, "expected COUNT/SECONDSs, e.g. 5/10s");
        cfg.chat_rate_count = (int)c;
        cfg.chat_rate_window_s = (int)w;
        return 0;
    }
    }
    return -1;
}

void config_free(void)
{
    char *base = (char *)&cfg;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        enum ctype t = vars[i].type;
        if (t == C_STR || t == C_SECRET || t == C_URL || t == C_ENUM || t == C_LISTEN) {
            char **p = (char **)(base + vars[i].off);
            free(*p);
            *p = NULL;
        }
    }
}

int config_load(char *err, size_t errlen)
{
    config_free(); /* a reload replaces every value */
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const struct cvar *v = &vars[i];
        const char *val = getenv(v->name);
        if (val && !*val) val = NULL;
        if (!val) val = v->def;
        if (!val && v->type != C_STR && v->type != C_SECRET && v->type != C_URL) continue;
        if (parse_one(v, val, err, errlen) != 0) return -1;
    }
    if (log_set_level_name(cfg.log_level) != 0) {
        snprintf(err, errlen, "invalid REELD_LOG=\"%s\"", cfg.log_level);
        return -1;
    }
    if (strcmp(cfg.auth, "jwks") == 0) {
        if (!cfg.jwks_url && !cfg.jwks_file) {
            snprintf(err, errlen, "REELD_AUTH=jwks needs REELD_JWKS_URL or REELD_JWKS_FILE");
            return -1;
        }
        if (!cfg.jwt_issuer) {
            snprintf(err, errlen, "REELD_AUTH=jwks needs REELD_JWT_ISSUER");
            return -1;
        }
    }
    return 0;
}

void config_help(FILE *out)
{
    fprintf(out, "Environment:\n");
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const struct cvar *v = &vars[i];
        fprintf(out, "  %-36s %s\n  %-36s   default: %s\n", v->name, v->help, "",
                v->def ? v->def : "-");
    }
}

void config_markdown(FILE *out)
{
    fprintf(out, "| variable | default | meaning |\n|---|---|---|\n");
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const struct cvar *v = &vars[i];
        fprintf(out, "| %s | %s | %s |\n", v->name, v->def ? v->def : "—", v->help);
    }
}
