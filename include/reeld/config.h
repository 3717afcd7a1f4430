/* Configuration from the environment, driven by one declarative table
 * (name, type, default, validator, help) in src/core/config.c. The same
 * table produces `reeld --help` and the README's table. */
#ifndef REELD_CONFIG_H
#define REELD_CONFIG_H

#include <stdint.h>
#include <stdio.h>

struct config {
    char *listen_host;
    int listen_port;
    char *public_url;
    char *data_dir;
    char *database_url; /* NULL: the private cluster under data_dir */
    int db_pool;
    char *auth; /* "dev" or "jwks" */
    char *jwks_url, *jwks_file;
    char *jwt_issuer, *jwt_audience, *jwt_azp;
    char *transcriber, *llm, *embedder;
    char *openai_api_key, *openai_base_url;
    char *llm_model, *llm_fallback_model, *embed_model;
    int embed_dim;
    char *assemblyai_api_key, *assemblyai_base_url;
    char *deepgram_api_key, *deepgram_base_url;
    char *transcription_webhook_secret;
    char *stripe_webhook_secret, *clerk_webhook_secret;
    char *storage;
    char *s3_endpoint, *s3_bucket, *s3_region, *aws_access_key_id, *aws_secret_access_key;
    char *url_signing_key;
    int chat_rate_count, chat_rate_window_s;
    char *log_level;
    /* HTTP limits */
    int max_conns;
    int max_header_bytes;
    int64_t max_json_bytes;
    int header_timeout_s, idle_timeout_s, body_timeout_s;
    int64_t sse_max_queued;
    int sse_heartbeat_s;
    int shutdown_grace_s;
    int upload_sweep_s;
    /* pipeline */
    int job_lease_s, job_max_attempts, job_backoff_ms, stage_concurrency;
    char *workers; /* "on" or "off" */
    int index_budget_mb;
    int provider_timeout_s;
    int64_t transcribe_max_bytes;
};

extern struct config cfg;

/* Reads every variable from the environment into cfg, applying defaults.
 * On a bad value returns -1 with one line naming the variable in err. */
int config_load(char *err, size_t errlen);
/* Releases the strings config_load allocated. */
void config_free(void);
/* Prints the variables with defaults and help text (for --help). */
void config_help(FILE *out);
/* Prints the README's Markdown table. */
void config_markdown(FILE *out);

#endif
