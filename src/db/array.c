/* Array literals for array parameters (db.h). */
#include "reeld/db.h"

#include <stdlib.h>
#include <string.h>

char *db_array_lit(const char *const *v, int n)
{
    size_t len = 3; /* braces and the NUL */
    for (int i = 0; i < n; i++) {
        len += 1 + (v[i] ? 2 : 4); /* comma; quotes or NULL */
        for (const char *p = v[i]; p && *p; p++)
            len += *p == '"' || *p == '\\' ? 2 : 1;
    }
    char *out = malloc(len), *o = out;
    if (!out) return NULL;
    *o++ = '{';
    for (int i = 0; i < n; i++) {
        if (i) *o++ = ',';
        if (!v[i]) {
            memcpy(o, "NULL", 4);
            o += 4;
            continue;
        }
        *o++ = '"';
        for (const char *p = v[i]; *p; p++) {
            if (*p == '"' || *p == '\\') *o++ = '\\';
            *o++ = *p;
        }
        *o++ = '"';
    }
    *o++ = '}';
    *o = '\0';
    return out;
}
