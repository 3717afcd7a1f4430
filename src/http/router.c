/* Method + path routing with ":param" segments and a "*" last segment. */
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

static char **split(const char *path, int *n)
{
    int cap = 8, k = 0;
    char **v = malloc(sizeof *v * (size_t)cap);
    const char *p = path;
    while (v && *p) {
        while (*p == '/')
            p++;
        if (!*p) break;
        size_t l = strcspn(p, "/");
        if (k == cap) {
            cap *= 2;
            char **nv = realloc(v, sizeof *v * (size_t)cap);
            if (!nv) break;
            v = nv;
        }
        v[k++] = strndup(p, l);
        p += l;
    }
    *n = k;
    return v;
}

int http_route(struct http_server *s, const char *method, const char *pattern, http_handler h,
               const struct http_route_opts *o)
{
    if (s->nroutes == s->cap_routes) {
        int cap = s->cap_routes ? s->cap_routes * 2 : 32;
        struct http_route_ent *nr = realloc(s->routes, sizeof *nr * (size_t)cap);
        if (!nr) return -1;
        s->routes = nr;
        s->cap_routes = cap;
    }
    struct http_route_ent *e = &s->routes[s->nroutes];
    memset(e, 0, sizeof *e);
    e->method = strdup(method);
    e->pattern = strdup(pattern);
    e->segs = split(pattern, &e->nsegs);
    if (e->nsegs > 0 && strcmp(e->segs[e->nsegs - 1], "*") == 0) {
        e->tail = 1;
        free(e->segs[--e->nsegs]);
    }
    e->h = h;
    if (o) e->o = *o;
    s->nroutes++;
    return 0;
}

void http_routes_each(const struct http_server *s,
                      void (*fn)(void *arg, const char *method, const char *pattern), void *arg)
{
    for (int i = 0; i < s->nroutes; i++)
        fn(arg, s->routes[i].method, s->routes[i].pattern);
}

void http_router_free(struct http_server *s)
{
    for (int i = 0; i < s->nroutes; i++) {
        struct http_route_ent *e = &s->routes[i];
        for (int k = 0; k < e->nsegs; k++)
            free(e->segs[k]);
        free(e->segs);
        free(e->method);
        free(e->pattern);
    }
    free(s->routes);
    s->routes = NULL;
    s->nroutes = 0;
}

/* Does path match e? Fills r->params on success. A path ending in '/'
 * matches the same pattern as without it only for tail routes. */
static int match_one(const struct http_route_ent *e, struct http_req *r)
{
    const char *p = r->path;
    int np = 0;
    for (int k = 0; k < e->nsegs; k++) {
        if (*p != '/') return 0;
        p++;
        size_t l = strcspn(p, "/");
        if (l == 0) return 0;
        const char *seg = e->segs[k];
        if (seg[0] == ':') {
            if (np == HTTP_MAX_PARAMS) return 0;
            char *d = http_decode(r, p, l, 0);
            if (!d) return 0;
            r->params[np++] = d;
        } else if (strlen(seg) != l || strncmp(seg, p, l) != 0) {
            return 0;
        }
        p += l;
    }
    if (e->tail) {
        if (*p != '/' && *p != '\0') return 0;
    } else if (*p != '\0') {
        return 0;
    }
    r->nparams = np;
    return 1;
}

const struct http_route_ent *http_router_match(const struct http_server *s, struct http_req *r,
                                               int *method_mismatch, char *allow, size_t allowlen)
{
    *method_mismatch = 0;
    allow[0] = '\0';
    size_t al = 0;
    for (int i = 0; i < s->nroutes; i++) {
        const struct http_route_ent *e = &s->routes[i];
        if (!match_one(e, r)) continue;
        if (strcmp(e->method, "*") == 0 || strcmp(e->method, r->method) == 0 ||
            (strcmp(r->method, "HEAD") == 0 && strcmp(e->method, "GET") == 0))
            return e;
        *method_mismatch = 1;
        size_t ml = strlen(e->method);
        if (!strstr(allow, e->method) && al + ml + 3 < allowlen) {
            if (al) {
                memcpy(allow + al, ", ", 2);
                al += 2;
            }
            memcpy(allow + al, e->method, ml);
            al += ml;
            allow[al] = '\0';
        }
    }
    r->nparams = 0;
    return NULL;
}
