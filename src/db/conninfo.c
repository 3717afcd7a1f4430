/* Pinning the database host's address at start-up; see db.h. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <libpq-fe.h>

#include "reeld/db.h"
#include "reeld/log.h"

static int is_numeric_host(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* Appends key='value' with libpq's quoting (backslash before ' and \). */
static void add_kv(struct evbuffer *b, const char *k, const char *v)
{
    evbuffer_add_printf(b, "%s%s='", evbuffer_get_length(b) ? " " : "", k);
    for (const char *p = v; *p; p++) {
        if (*p == '\'' || *p == '\\') evbuffer_add(b, "\\", 1);
        evbuffer_add(b, p, 1);
    }
    evbuffer_add(b, "'", 1);
}

int db_conninfo_pin(const char *conninfo, char *out, size_t outlen)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        log_msg(LOG_ERROR, "bad DATABASE_URL", "error", perr ? perr : "unparsable");
        PQfreemem(perr);
        return -1;
    }
    const char *host = NULL, *hostaddr = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
    }
    char addr[INET6_ADDRSTRLEN] = "";
    if (host && *host && !hostaddr && host[0] != '/' && host[0] != '@' && !strchr(host, ',') &&
        !is_numeric_host(host)) {
        struct addrinfo hints = {0}, *ai = NULL;
        hints.ai_socktype = SOCK_STREAM;
        int rc = getaddrinfo(host, NULL, &hints, &ai);
        if (rc != 0 || !ai) {
            log_msg(LOG_ERROR, "cannot resolve the database host", "host", host);
            PQconninfoFree(opts);
            return -1;
        }
        const void *src = ai->ai_family == AF_INET6
                              ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                              : (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
        inet_ntop(ai->ai_family, src, addr, sizeof addr);
        freeaddrinfo(ai);
    }
    struct evbuffer *b = evbuffer_new();
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val && *o->val) add_kv(b, o->keyword, o->val);
    if (addr[0]) {
        add_kv(b, "hostaddr", addr);
        struct log_line *l = log_begin(LOG_INFO, "database host pinned");
        log_str(l, "host", host);
        log_str(l, "hostaddr", addr);
        log_end(l);
    }
    size_t n = evbuffer_get_length(b);
    int ok = n < outlen;
    if (ok) {
        evbuffer_remove(b, out, n);
        out[n] = '\0';
    }
    evbuffer_free(b);
    PQconninfoFree(opts);
    return ok ? 0 : -1;
}
