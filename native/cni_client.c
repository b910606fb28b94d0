/* dpdkeni-cni: the binary a container runtime executes for every pod network call.
 *
 * It starts in about a millisecond: it connects to the resident plugin (`dpdkeni cni serve`, socket
 * $DPDKENI_CNI_SOCKET or ${DPDKENI_STATE_DIR:-/run/dpdkeni}/cni.sock, an empty variable meaning the default),
 * checks with SO_PEERCRED that the listener runs as root, and hands it the call in the protocol of
 * dpdkeni/cni_client.py: one request line
 *   {"env": {CNI_*, DPDKENI_* and PATH}, "stdin": base64 of the configuration}
 * then one reply line {"rc": N, "stdout": "..."} (read up to 16 MiB); it prints stdout and exits with rc.
 * A listener that is not root is sent nothing: CNI error 5, worded as cni_client.py words it.
 * When no server answers it execs the in-process Python plugin, `dpdkeni-cni-py` beside this binary, with stdin
 * untouched. A server that closes the connection before a whole reply gives the CNI error 11 (try again later).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

#define FALLBACK "dpdkeni-cni-py"
#define TRY_AGAIN_LATER 11
#define IO_FAILURE 5
#define MAX_REPLY (16 << 20) /* as MAX_REPLY in cni_client.py */

struct buf {
    char *data;
    size_t len, cap;
};

static void die_oom(void)
{
    fputs("dpdkeni-cni: out of memory\n", stderr);
    exit(1);
}

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data)
            die_oom();
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

/* A JSON string literal; bytes >= 0x80 pass as they are (UTF-8 in, UTF-8 out). */
static void buf_json(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    buf_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            buf_add(b, esc, 2);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_add(b, esc, 6);
        } else {
            buf_add(b, &s[i], 1);
        }
    }
    buf_add(b, "\"", 1);
}

static void buf_base64(struct buf *b, const unsigned char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) | (i + 2 < n ? s[i + 2] : 0);
        char out[4] = {tab[v >> 18 & 63], tab[v >> 12 & 63], i + 1 < n ? tab[v >> 6 & 63] : '=',
                       i + 2 < n ? tab[v & 63] : '='};
        buf_add(b, out, 4);
    }
}

static int passed(const char *entry)
{
    return !strncmp(entry, "CNI_", 4) || !strncmp(entry, "DPDKENI_", 8) || !strncmp(entry, "PATH=", 5);
}

static void socket_path(char *out, size_t size)
{
    const char *sock = getenv("DPDKENI_CNI_SOCKET");
    const char *state = getenv("DPDKENI_STATE_DIR");
    if (!state || !*state)  /* as cni_client.py and statedir.path: unset or empty means the default */
        state = "/run/dpdkeni";
    if (sock && *sock)
        snprintf(out, size, "%s", sock);
    else
        snprintf(out, size, "%s/cni.sock", state);
}

/* Why the listener may not have the call (SO_PEERCRED: not root), in cni_client.py's words; "" when it may. */
static char refusal[PATH_MAX + 160];

/* A connected socket, or -1 when no server answers; sets `refusal` when the listener is not root. */
static int connect_server(void)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char path[PATH_MAX];
    socket_path(path, sizeof(path));
    if (strlen(path) >= sizeof(addr.sun_path))
        return -1;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        close(fd);
        return -1;
    }
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        snprintf(refusal, sizeof(refusal), "the process listening on %s cannot be identified (SO_PEERCRED: %s): "
                 "not sending it the configuration", path, strerror(errno));
    else if (cred.uid != 0)
        snprintf(refusal, sizeof(refusal), "the process listening on %s (pid %d) is uid %u, not root: "
                 "not sending it the configuration", path, (int)cred.pid, (unsigned)cred.uid);
    return fd;
}

/* The in-process plugin, installed beside this binary (symlinks to it resolved). */
static void exec_fallback(char **argv)
{
    char self[PATH_MAX], target[PATH_MAX + sizeof(FALLBACK) + 1];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = 0;
            snprintf(target, sizeof(target), "%s/%s", self, FALLBACK);
            argv[0] = target;
            execv(target, argv);
        }
    }
    argv[0] = FALLBACK;
    execvp(FALLBACK, argv);
    fprintf(stderr, "dpdkeni-cni: no server answers and %s cannot run: %s\n", FALLBACK, strerror(errno));
    printf("{\"cniVersion\": \"1.0.0\", \"code\": 999, \"msg\": \"dpdkeni-cni: no server and no %s\"}\n",
           FALLBACK);
    exit(1);
}

/* Read until EOF, or (line != 0) until the first newline or `limit` bytes: the reply is one line, as
 * cni_client.py reads it (readline(MAX_REPLY)). */
static int read_all(int fd, struct buf *b, int line, size_t limit)
{
    char chunk[65536];
    while (!line || !b->len || !memchr(b->data, '\n', b->len)) {
        if (limit && b->len >= limit)
            return 0;
        size_t want = limit && limit - b->len < sizeof(chunk) ? limit - b->len : sizeof(chunk);
        ssize_t n = read(fd, chunk, want);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf_add(b, chunk, (size_t)n);
    }
    return 0;
}

static int send_all(int fd, const char *data, size_t n)
{
    while (n) {
        ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += w;
        n -= (size_t)w;
    }
    return 0;
}

static void request(struct buf *req, const struct buf *config)
{
    buf_str(req, "{\"env\": {");
    int first = 1;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || !passed(*e))
            continue;
        if (!first)
            buf_str(req, ", ");
        first = 0;
        buf_json(req, *e, (size_t)(eq - *e));
        buf_str(req, ": ");
        buf_json(req, eq + 1, strlen(eq + 1));
    }
    buf_str(req, "}, \"stdin\": \"");
    buf_base64(req, (const unsigned char *)config->data, config->len);
    buf_str(req, "\"}\n");
}

static void put_utf8(struct buf *out, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp, n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 63)), n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 63)), u[2] = (char)(0x80 | (cp & 63)), n = 3;
    } else {
        u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 63)), u[2] = (char)(0x80 | (cp >> 6 & 63));
        u[3] = (char)(0x80 | (cp & 63)), n = 4;
    }
    buf_add(out, u, n);
}

static int hex4(const char *s, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
        if (d > 15)
            return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

/* Decode the JSON string starting at the opening quote *p; returns the position after it, or NULL. */
static const char *json_string(const char *p, struct buf *out)
{
    if (*p++ != '"')
        return NULL;
    while (*p && *p != '"') {
        if (*p != '\\') {
            buf_add(out, p++, 1);
            continue;
        }
        const char *simple = "\"\\/bfnrt", *value = "\"\\/\b\f\n\r\t", *at = strchr(simple, p[1]);
        if (p[1] && at) {
            buf_add(out, &value[at - simple], 1);
            p += 2;
            continue;
        }
        unsigned cp, lo;
        if (p[1] != 'u' || hex4(p + 2, &cp) < 0)
            return NULL;
        p += 6;
        if (cp >= 0xd800 && cp < 0xdc00 && p[0] == '\\' && p[1] == 'u' && hex4(p + 2, &lo) == 0 &&
            lo >= 0xdc00 && lo < 0xe000) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
        }
        put_utf8(out, cp);
    }
    return *p == '"' ? p + 1 : NULL;
}

/* The value of key in the flat reply object {"rc": N, "stdout": "..."}: its text after the colon. */
static const char *json_key(const char *doc, const char *key)
{
    char quoted[32];
    snprintf(quoted, sizeof(quoted), "\"%s\"", key);
    const char *at = strstr(doc, quoted);
    if (!at)
        return NULL;
    at += strlen(quoted);
    while (*at == ' ' || *at == ':')
        at++;
    return at;
}

static int config_version(const struct buf *config, char *out, size_t size)
{
    const char *v = config->data ? json_key(config->data, "cniVersion") : NULL;
    struct buf s = {0};
    if (v && json_string(v, &s) && s.len && s.len < size && !strpbrk(s.data, "\"\\"))
        snprintf(out, size, "%s", s.data);
    else
        snprintf(out, size, "1.1.0");
    free(s.data);
    return 0;
}

/* A CNI error document on stdout, as cni_client.py prints one: {"cniVersion", "code", "msg"}; returns 1. */
static int cni_error(const struct buf *config, int code, const char *msg)
{
    char version[64];
    struct buf doc = {0};
    config_version(config, version, sizeof(version));
    buf_str(&doc, "{\"cniVersion\": ");
    buf_json(&doc, version, strlen(version));
    char num[32];
    snprintf(num, sizeof(num), ", \"code\": %d, \"msg\": ", code);
    buf_str(&doc, num);
    buf_json(&doc, msg, strlen(msg));
    buf_str(&doc, "}\n");
    fwrite(doc.data, 1, doc.len, stdout);
    fflush(stdout);
    free(doc.data);
    return 1;
}

/* The reply's exit status: an integer (as cni_client.py's isinstance(rc, int)), or -1 in *ok = 0. */
static int reply_rc(const char *at, int *ok)
{
    const char *p = at;
    if (*p == '-')
        p++;
    *ok = *p >= '0' && *p <= '9';
    while (*p >= '0' && *p <= '9')
        p++;
    *ok = *ok && (*p == ',' || *p == '}' || *p == ' ' || *p == '\n');
    return *ok ? atoi(at) : -1;
}

int main(int argc, char **argv)
{
    (void)argc;
    int fd = connect_server();
    if (fd < 0)
        exec_fallback(argv);
    struct buf config = {0}, req = {0}, reply = {0}, out = {0};
    if (read_all(STDIN_FILENO, &config, 0, 0) < 0) {
        fprintf(stderr, "dpdkeni-cni: reading the configuration: %s\n", strerror(errno));
        return 1;
    }
    if (refusal[0]) {  /* checked before anything is sent: the listener never sees the configuration */
        close(fd);
        return cni_error(&config, IO_FAILURE, refusal);
    }
    request(&req, &config);
    if (send_all(fd, req.data, req.len) == 0)  /* a refused request: the server's reply may still be there */
        shutdown(fd, SHUT_WR);
    read_all(fd, &reply, 1, MAX_REPLY);
    close(fd);
    const char *rc_at = reply.data ? json_key(reply.data, "rc") : NULL;
    const char *stdout_at = reply.data ? json_key(reply.data, "stdout") : NULL;
    int ok = 0, rc = rc_at ? reply_rc(rc_at, &ok) : -1;
    if (!ok || (stdout_at && !json_string(stdout_at, &out)))  /* no stdout is an empty one, as in cni_client.py */
        return cni_error(&config, TRY_AGAIN_LATER, "the dpdkeni cni server closed the connection");
    fwrite(out.data ? out.data : "", 1, out.len, stdout);
    fflush(stdout);
    return rc;
}
