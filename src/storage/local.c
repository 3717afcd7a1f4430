/* Local-disk storage backend; see include/reeld/storage.h.
 *
 * Layout under the data dir (both 0700: recordings are private):
 *   storage/<key>             finished objects
 *   uploads/<upload_id>.part  uploads in progress
 *
 * Every path is built from a validated upload id (a UUID, lower-cased)
 * or a validated key, never from unchecked input. Writes happen on the
 * loop; fdatasync/fsync/rename go to the helper thread (offload.c). */
#include "reeld/storage.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "offload.h"
#include "reeld/config.h"
#include "reeld/util.h"

#define KEY_MAX 1024

static struct {
    int ready;
    char root[PATH_MAX];    /* absolute data dir */
    char objects[PATH_MAX]; /* root/storage */
    char uploads[PATH_MAX]; /* root/uploads */
} st;

struct storage_upload {
    int fd;
    int64_t offset; /* bytes appended, durable or not */
    int sync_pending;
    int in_cb;  /* its sync callback is running: close must not free */
    int closed; /* closed by the owner; freed once no sync is pending */
};

/* A sync or a finish travelling to the helper thread and back. */
struct job {
    struct offload_job oj;    /* first: the helper hands this pointer back */
    struct storage_upload *u; /* sync: the handle whose flags to update */
    int fd;                   /* sync: u->fd, kept open until done */
    int64_t offset;           /* sync: offset to report; finish: size found */
    char *src, *dst;          /* finish: part file and object path */
    size_t key_at;            /* finish: index of the key in dst */
    storage_sync_cb cb;
    void *arg;
    int err_no;          /* set by the thread */
    const char *what;    /* the call that failed */
    const char *failure; /* found on the loop, before any work */
};

/* ---- names ------------------------------------------------------------- */

/* Keys are relative paths of [A-Za-z0-9._-] segments: no empty, "." or
 * ".." segment, no leading or trailing '/'. */
static int key_ok(const char *k)
{
    if (!k) return 0;
    size_t n = strlen(k);
    if (n == 0 || n > KEY_MAX || k[0] == '/' || k[n - 1] == '/') return 0;
    if (strstr(k, "..") || strstr(k, "//")) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (!isalnum(c) && c != '.' && c != '_' && c != '/' && c != '-') return 0;
        /* a "." segment: at the start or after a '/', followed by '/' or the end */
        if (c == '.' && (i == 0 || k[i - 1] == '/') && (i + 1 == n || k[i + 1] == '/')) return 0;
    }
    return 1;
}

static int part_path(const char *upload_id, char *buf, size_t n)
{
    if (!util_is_uuid(upload_id)) return -1;
    char id[37];
    for (int i = 0; i < 37; i++)
        id[i] = (char)tolower((unsigned char)upload_id[i]);
    int w = snprintf(buf, n, "%s/%s.part", st.uploads, id);
    return w > 0 && (size_t)w < n ? 0 : -1;
}

static int object_path(const char *key, char *buf, size_t n)
{
    if (!key_ok(key)) return -1;
    int w = snprintf(buf, n, "%s/%s", st.objects, key);
    return w > 0 && (size_t)w < n ? 0 : -1;
}

static int mkdir_one(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST) return 0;
    return -1;
}

/* Creates the directories named by path up to its last '/', skipping
 * those that end before path[from] (they exist). A new directory is made
 * durable by an fsync of its parent, done when sync is set. */
static int mkdir_parents(char *path, size_t from, int sync)
{
    for (char *s = path + from; (s = strchr(s, '/')); s++) {
        *s = '\0';
        int made = mkdir(path, 0700) == 0;
        int ok = made || errno == EEXIST;
        if (made && sync) {
            char *slash = strrchr(path, '/');
            *slash = '\0';
            int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                fsync(dfd);
                close(dfd);
            }
            *slash = '/';
        }
        *s = '/';
        if (!ok) return -1;
    }
    return 0;
}

/* ---- set-up ------------------------------------------------------------ */

int storage_init(struct event_base *base, const char *data_dir, char *err, size_t errlen)
{
    if (st.ready) {
        snprintf(err, errlen, "storage already initialized");
        return -1;
    }
    if (cfg.storage && strcmp(cfg.storage, "s3") == 0) {
        snprintf(err, errlen, "S3 storage is not available in this build");
        return -1;
    }
    if (cfg.storage && strcmp(cfg.storage, "local") != 0) {
        snprintf(err, errlen, "REELD_STORAGE: unknown backend \"%s\"", cfg.storage);
        return -1;
    }
    char dir[PATH_MAX];
    if (!data_dir || snprintf(dir, sizeof dir, "%s/", data_dir) >= (int)sizeof dir ||
        mkdir_parents(dir, 1, 0) != 0 || !realpath(data_dir, st.root)) {
        snprintf(err, errlen, "data dir %s: %s", data_dir ? data_dir : "(null)", strerror(errno));
        return -1;
    }
    if (snprintf(st.objects, sizeof st.objects, "%s/storage", st.root) >= (int)sizeof st.objects ||
        snprintf(st.uploads, sizeof st.uploads, "%s/uploads", st.root) >= (int)sizeof st.uploads) {
        snprintf(err, errlen, "data dir path too long");
        return -1;
    }
    if (mkdir_one(st.objects) != 0 || mkdir_one(st.uploads) != 0) {
        snprintf(err, errlen, "cannot create %s/{storage,uploads}: %s", st.root, strerror(errno));
        return -1;
    }
    if (offload_start(base, err, errlen) != 0) return -1;
    st.ready = 1;
    return 0;
}

void storage_shutdown(void)
{
    if (!st.ready) return;
    offload_stop();
    st.ready = 0;
}

/* ---- completions ------------------------------------------------------- */

static void upload_free(struct storage_upload *u)
{
    if (u->fd >= 0) close(u->fd);
    free(u);
}

static void job_done(struct offload_job *oj)
{
    struct job *j = (struct job *)oj;
    struct storage_upload *u = j->u;
    char msg[200];
    const char *err = j->failure;
    if (!err && j->err_no) {
        if (j->err_no == ENOSPC || j->err_no == EDQUOT) {
            err = STORAGE_ERR_NOSPACE;
        } else {
            snprintf(msg, sizeof msg, "%s: %s", j->what, strerror(j->err_no));
            err = msg;
        }
    }
    if (u) {
        u->sync_pending = 0;
        u->in_cb = 1;
    }
    if (j->cb) j->cb(j->arg, err ? -1 : j->offset, err);
    if (u) {
        u->in_cb = 0;
        if (u->closed && !u->sync_pending) upload_free(u);
    }
    free(j->src);
    free(j->dst);
    free(j);
}

static struct job *job_new(storage_sync_cb cb, void *arg)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->oj.done = job_done;
    j->fd = -1;
    j->cb = cb;
    j->arg = arg;
    return j;
}

/* Reports failure on a later loop turn. Without a job (out of memory) or
 * without the helper (after shutdown) there is no later turn to use: the
 * callback then runs at once, the one exception to "never inside". */
static void fail_later(struct job *j, storage_sync_cb cb, void *arg, const char *why)
{
    if (j && st.ready) {
        j->failure = why;
        offload_submit(&j->oj);
        return;
    }
    if (j) free(j);
    if (cb) cb(arg, -1, j ? why : "out of memory");
}

/* ---- uploads ----------------------------------------------------------- */

struct storage_upload *storage_upload_open(const char *upload_id, int64_t offset, char *err,
                                           size_t errlen)
{
    char path[PATH_MAX];
    if (!st.ready) {
        snprintf(err, errlen, "storage is not running");
        return NULL;
    }
    if (part_path(upload_id, path, sizeof path) != 0) {
        snprintf(err, errlen, "invalid upload id");
        return NULL;
    }
    if (offset < 0) {
        snprintf(err, errlen, "negative offset");
        return NULL;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "open upload: %s", strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "upload is not a regular file");
        goto fail;
    }
    if (sb.st_size < offset) {
        snprintf(err, errlen, "offset %lld is beyond the %lld bytes stored", (long long)offset,
                 (long long)sb.st_size);
        goto fail;
    }
    /* Bytes past offset were written but never acknowledged (a crash or a
     * failed request before their sync): drop them. */
    if (sb.st_size > offset && ftruncate(fd, offset) != 0) {
        snprintf(err, errlen, "truncate upload: %s", strerror(errno));
        goto fail;
    }
    struct storage_upload *u = calloc(1, sizeof *u);
    if (!u) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    u->fd = fd;
    u->offset = offset;
    return u;
fail:
    close(fd);
    return NULL;
}

int storage_upload_write(struct storage_upload *u, const void *data, size_t len, int *nospace)
{
    if (nospace) *nospace = 0;
    if (!u || u->closed || (!data && len) || len > STORAGE_PIECE_MAX) {
        errno = EINVAL;
        return -1;
    }
    /* A plain write loop on the loop thread: at most 1 MiB into the page
     * cache is short (memory copy speed); making it durable is the slow
     * part, and that runs on the helper thread. */
    const char *p = data;
    int64_t at = u->offset;
    size_t left = len;
    while (left > 0) {
        ssize_t n = pwrite(u->fd, p, left, at);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            /* Cut what part of this piece landed, so the file ends where
             * the caller's offset says and a resume starts from a point it
             * knows. */
            while (ftruncate(u->fd, u->offset) != 0 && errno == EINTR) {
            }
            if (nospace && (e == ENOSPC || e == EDQUOT)) *nospace = 1;
            errno = e;
            return -1;
        }
        p += n;
        at += n;
        left -= (size_t)n;
    }
    u->offset = at;
    return 0;
}

int64_t storage_upload_offset(const struct storage_upload *u)
{
    return u ? u->offset : -1;
}

static void sync_work(struct offload_job *oj)
{
    struct job *j = (struct job *)oj;
    if (fdatasync(j->fd) != 0) {
        j->err_no = errno;
        j->what = "fdatasync";
    }
}

void storage_upload_sync(struct storage_upload *u, storage_sync_cb cb, void *arg)
{
    struct job *j = job_new(cb, arg);
    if (!u || u->closed) {
        fail_later(j, cb, arg, "no open upload");
        return;
    }
    if (u->sync_pending) {
        fail_later(j, cb, arg, "a sync is already pending on this upload");
        return;
    }
    if (!j || !st.ready) {
        fail_later(j, cb, arg, "storage is not running");
        return;
    }
    j->oj.work = sync_work;
    j->u = u;
    j->fd = u->fd;
    /* Everything appended before this point is covered: fdatasync starts
     * after these bytes are in the page cache. */
    j->offset = u->offset;
    u->sync_pending = 1;
    offload_submit(&j->oj);
}

void storage_upload_close(struct storage_upload *u)
{
    if (!u || u->closed) return;
    u->closed = 1;
    /* The helper may be syncing this fd: the handle (and fd) goes when
     * that sync has reported. */
    if (!u->sync_pending && !u->in_cb) upload_free(u);
}

static int fsync_dir(const char *path)
{
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -1;
    int rc = fsync(dfd);
    int e = errno;
    close(dfd);
    errno = e;
    return rc;
}

#define FAIL_WITH(call)                                                                            \
    do {                                                                                           \
        j->err_no = errno;                                                                         \
        j->what = call;                                                                            \
        return;                                                                                    \
    } while (0)

static void finish_work(struct offload_job *oj)
{
    struct job *j = (struct job *)oj;
    struct stat sb;
    int fd = open(j->src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        /* Already moved by an earlier finish (a retried complete): report
         * the object as it is. */
        if (errno == ENOENT && stat(j->dst, &sb) == 0 && S_ISREG(sb.st_mode)) {
            j->offset = sb.st_size;
            return;
        }
        if (errno == ENOENT) {
            j->failure = "upload not found";
            return;
        }
        FAIL_WITH("open upload");
    }
    if (fstat(fd, &sb) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        FAIL_WITH("fsync upload");
    }
    close(fd);
    j->offset = sb.st_size;
    if (mkdir_parents(j->dst, j->key_at, 1) != 0) FAIL_WITH("mkdir");
    if (rename(j->src, j->dst) != 0) FAIL_WITH("rename");
    /* The rename is durable once the directory that gained the name is. */
    char *slash = strrchr(j->dst, '/');
    *slash = '\0';
    int rc = fsync_dir(j->dst);
    *slash = '/';
    if (rc != 0) FAIL_WITH("fsync directory");
}

void storage_upload_finish(const char *upload_id, const char *key, storage_sync_cb cb, void *arg)
{
    struct job *j = job_new(cb, arg);
    char src[PATH_MAX], dst[PATH_MAX];
    if (!j || !st.ready) {
        fail_later(j, cb, arg, "storage is not running");
        return;
    }
    if (part_path(upload_id, src, sizeof src) != 0) {
        fail_later(j, cb, arg, "invalid upload id");
        return;
    }
    if (object_path(key, dst, sizeof dst) != 0) {
        fail_later(j, cb, arg, "invalid storage key");
        return;
    }
    j->src = strdup(src);
    j->dst = strdup(dst);
    if (!j->src || !j->dst) {
        fail_later(j, cb, arg, "out of memory");
        return;
    }
    j->key_at = strlen(st.objects) + 1;
    j->oj.work = finish_work;
    offload_submit(&j->oj);
}

static int unlink_quiet(const char *path)
{
    return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
}

int storage_upload_remove(const char *upload_id)
{
    char path[PATH_MAX];
    if (!st.ready || part_path(upload_id, path, sizeof path) != 0) return -1;
    return unlink_quiet(path);
}

/* ---- stored objects ---------------------------------------------------- */

int64_t storage_size(const char *key)
{
    char path[PATH_MAX];
    struct stat sb;
    if (!st.ready || object_path(key, path, sizeof path) != 0) return -1;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return -1;
    return sb.st_size;
}

int storage_open_read(const char *key, int64_t *size)
{
    char path[PATH_MAX];
    struct stat sb;
    if (!st.ready || object_path(key, path, sizeof path) != 0) return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return -1;
    }
    if (size) *size = sb.st_size;
    return fd;
}

const char *storage_local_path(const char *key, char *buf, size_t buflen)
{
    if (!st.ready || !buf || object_path(key, buf, buflen) != 0) return NULL;
    return buf;
}

/* On the loop: unlinking frees the file's extents synchronously, which
 * takes milliseconds at most for a GiB on ext4/xfs; deletes are rare. */
int storage_remove(const char *key)
{
    char path[PATH_MAX];
    if (!st.ready || object_path(key, path, sizeof path) != 0) return -1;
    return unlink_quiet(path);
}
