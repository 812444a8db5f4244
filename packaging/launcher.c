/*
 * The `flannelette` executable of the frozen build: starts the bundled interpreter on the
 * lean shim (cni_plugin/shim.py) and nothing else.
 *
 * Why not PyInstaller's bootloader, as for flannelette-full and flanneletted: on Linux a
 * onedir bootloader re-execs itself, then loads encodings from base_library.zip through
 * zipimport and runs its own bootstrap modules. For a process that lives ~10 ms per CNI
 * call that doubled the start-up (docs/performance.md#the-c-launcher). This launcher
 * finds libpython through its RUNPATH ($ORIGIN/_internal), imports from two directories
 * only, and runs `flannelette_shim.main()`:
 *   <onedir>/_internal/lean         the encodings package and flannelette_shim, as .pyc (build.py)
 *   <onedir>/<LIB_DYNLOAD>          the stdlib extension modules (_json, _socket)
 * The interpreter runs isolated (no environment variables, no site, no user site), in
 * UTF-8 mode, so the node's locale and PYTHON* variables cannot change what runs.
 * Before all that, a plain ADD, CHECK or DEL for a reachable daemon is forwarded by the C code
 * below (`fast_path`), with no interpreter at all; anything else goes to the shim.
 * packaging/build.py compiles it with -DLIB_DYNLOAD="..." and checks the result.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef LIB_DYNLOAD
#error "build with -DLIB_DYNLOAD=\"<path of lib-dynload relative to the onedir>\""
#endif

/* A CNI error on stdout, the only thing a runtime reads; message must need no escaping. */
static int fail(const char *msg)
{
    static const char head[] = "{\"cniVersion\":\"1.1.0\",\"code\":999,\"msg\":\"flannelette cannot start: ";
    static const char tail[] = "\"}\n";
    (void)(write(1, head, sizeof head - 1) < 0 || write(1, msg, strlen(msg)) < 0
           || write(1, tail, sizeof tail - 1) < 0);
    return 1;
}

static int add_path(PyConfig *config, const char *dir, const char *sub)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, sub) >= (int)sizeof path)
        return -1;
    wchar_t *wide = Py_DecodeLocale(path, NULL);
    if (wide == NULL)
        return -1;
    PyStatus status = PyWideStringList_Append(&config->module_search_paths, wide);
    PyMem_RawFree(wide);
    return PyStatus_Exception(status) ? -1 : 0;
}

/* ------------------------------------------------------------------ the fast path in C
 *
 * A CNI ADD, CHECK or DEL whose config names a reachable daemon is forwarded right here,
 * before any interpreter starts: the same request bytes the shim sends (cni_plugin/shim.py
 * documents the wire format), the same fd of CNI_NETNS, the same reply handling. Starting
 * the interpreter costs about three Go plugin start-ups (docs/benchmarks.md, "Where one
 * ADD's time goes"); this costs none. Whenever anything is not plainly the common case
 * (VERSION, arguments, a config with a non-ASCII byte, an escape in a top-level key or in the
 * values read here, duplicate CNI_* variables, no daemon, a refusal) nothing has been sent
 * yet and the shim takes over with the very same stdin, so every unusual input gets the
 * shim's answer, byte for byte. */

#define MAX_STDIN (1 << 20)   /* cni_plugin/shim.py's MAX_STDIN, MAX_ENV, DEFAULT_SOCKET */
#define MAX_ENV (1 << 16)
#define DEFAULT_SOCKET "/run/flannelette/cni.sock"
#define LATEST_VERSION "1.1.0"
#define MAX_DEPTH 64
#define REFUSED 255

struct json_scan {
    const char *p, *end;
    int bad;
};

struct json_str {   /* a top-level member's value, when it is a string without escapes */
    const char *start;
    size_t len;
    int seen, plain;
};

static void skip_ws(struct json_scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* A string at s->p; sets *escaped when it holds a backslash escape. */
static void scan_string(struct json_scan *s, const char **start, size_t *len, int *escaped)
{
    *escaped = 0;
    s->p++;   /* the opening quote */
    *start = s->p;
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            *len = (size_t)(s->p - *start);
            s->p++;
            return;
        }
        if (c < 0x20) {   /* json.loads(strict=True) refuses control characters in strings */
            s->bad = 1;
            return;
        }
        if (c == '\\') {
            *escaped = 1;
            if (++s->p >= s->end || !strchr("\"\\/bfnrtu", *s->p)) {
                s->bad = 1;
                return;
            }
            if (*s->p == 'u') {
                for (int i = 0; i < 4; i++)
                    if (++s->p >= s->end || !strchr("0123456789abcdefABCDEF", *s->p)) {
                        s->bad = 1;
                        return;
                    }
            }
        }
        s->p++;
    }
    s->bad = 1;
}

static int digits(struct json_scan *s)
{
    const char *from = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > from;
}

static void scan_value(struct json_scan *s, int depth);

static void scan_number(struct json_scan *s)
{
    if (*s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (!digits(s)) {
        s->bad = 1;   /* also -Infinity, which json.loads takes: the shim decides then */
        return;
    }
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!digits(s)) {
            s->bad = 1;
            return;
        }
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!digits(s))
            s->bad = 1;
    }
}

static void scan_literal(struct json_scan *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        s->bad = 1;
    else
        s->p += n;
}

/* An object or array body after its opening bracket; members of the top-level object named
 * daemonSocket and cniVersion are noted (the last one wins, as in json.loads). */
static void scan_container(struct json_scan *s, int depth, char close, struct json_str *sock,
                           struct json_str *version)
{
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return;
    }
    for (;;) {
        struct json_str *noted = NULL;
        if (close == '}') {
            const char *key;
            size_t len;
            int escaped;
            if (s->p >= s->end || *s->p != '"') {
                s->bad = 1;
                return;
            }
            scan_string(s, &key, &len, &escaped);
            if (s->bad)
                return;
            if (depth == 1) {
                if (escaped) {   /* "daemon\u0053ocket" is daemonSocket to json.loads */
                    s->bad = 1;
                    return;
                }
                if (len == 12 && memcmp(key, "daemonSocket", 12) == 0)
                    noted = sock;
                else if (len == 10 && memcmp(key, "cniVersion", 10) == 0)
                    noted = version;
            }
            skip_ws(s);
            if (s->p >= s->end || *s->p != ':') {
                s->bad = 1;
                return;
            }
            s->p++;
            skip_ws(s);
        }
        if (noted != NULL) {
            noted->seen = 1;
            noted->plain = 0;
            if (s->p < s->end && *s->p == '"') {
                int escaped;
                scan_string(s, &noted->start, &noted->len, &escaped);
                noted->plain = !escaped;
            } else
                scan_value(s, depth + 1);
        } else
            scan_value(s, depth + 1);
        if (s->bad)
            return;
        skip_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            skip_ws(s);
            continue;
        }
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return;
        }
        s->bad = 1;
        return;
    }
}

static void scan_value(struct json_scan *s, int depth)
{
    if (depth > MAX_DEPTH || s->p >= s->end) {
        s->bad = 1;
        return;
    }
    const char *start;
    size_t len;
    int escaped;
    switch (*s->p) {
    case '{':
        scan_container(s, depth, '}', NULL, NULL);
        return;
    case '[':
        scan_container(s, depth, ']', NULL, NULL);
        return;
    case '"':
        scan_string(s, &start, &len, &escaped);
        return;
    case 't':
        scan_literal(s, "true");
        return;
    case 'f':
        scan_literal(s, "false");
        return;
    case 'n':
        scan_literal(s, "null");
        return;
    default:
        if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9'))
            scan_number(s);
        else
            s->bad = 1;   /* NaN, Infinity: json.loads takes them; the shim decides */
    }
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* 1 when all n bytes came, 0 at end of stream, -errno on an error. */
static int recv_exact(int sock, char *buf, size_t n)
{
    while (n) {
        ssize_t got = recv(sock, buf, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (got == 0)
            return 0;
        buf += got;
        n -= (size_t)got;
    }
    return 1;
}

static int env_is_cni(const char *item)
{
    return strncmp(item, "CNI_", 4) == 0 && strchr(item, '=') != NULL;
}

/* The CNI_* variables as the shim sends them ("KEY=VALUE\0" each, environment order);
 * NULL when the shim must decide (a name twice, too much). */
static char *cni_environ(char **envp, size_t *len)
{
    size_t total = 0;
    for (char **e = envp; *e; e++) {
        if (!env_is_cni(*e))
            continue;
        size_t key = (size_t)(strchr(*e, '=') - *e);
        for (char **o = envp; o < e; o++)
            if (env_is_cni(*o) && strncmp(*o, *e, key + 1) == 0)
                return NULL;
        total += strlen(*e) + 1;
    }
    if (total > MAX_ENV)
        return NULL;
    char *out = malloc(total + 1), *at = out;
    if (out == NULL)
        return NULL;
    for (char **e = envp; *e; e++)
        if (env_is_cni(*e)) {
            size_t n = strlen(*e) + 1;
            memcpy(at, *e, n);
            at += n;
        }
    *len = total;
    return out;
}

static void put_be32(char *at, uint32_t v)
{
    at[0] = (char)(v >> 24);
    at[1] = (char)(v >> 16);
    at[2] = (char)(v >> 8);
    at[3] = (char)v;
}

/* The shim's error reply for a daemon gone mid-request; `version` needs no escaping. */
static int gone_mid_request(const struct json_str *version, const char *why)
{
    char out[512];
    int n = snprintf(out, sizeof out, "{\"cniVersion\":\"%.*s\",\"code\":11,\"msg\":\"the flannelette daemon "
                     "went away mid-request (%s); retry the operation\"}\n",
                     version->seen && version->plain && version->len ? (int)version->len : (int)strlen(LATEST_VERSION),
                     version->seen && version->plain && version->len ? version->start : LATEST_VERSION, why);
    if (n > 0 && (size_t)n < sizeof out)
        write_all(1, out, (size_t)n);
    return 1;
}

/* Sends the request and relays the reply: the exit status, or -1 when nothing was sent and
 * the shim must take over. */
static int forward(const char *stdin_buf, size_t stdin_len, char **envp)
{
    struct json_scan s = {stdin_buf, stdin_buf + stdin_len, 0};
    struct json_str sock = {0}, version = {0};
    for (size_t i = 0; i < stdin_len; i++)
        if ((unsigned char)stdin_buf[i] >= 0x80)
            return -1;
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return -1;
    scan_container(&s, 1, '}', &sock, &version);
    if (!s.bad)
        skip_ws(&s);
    if (s.bad || s.p != s.end)
        return -1;
    /* The shim's choices: no daemonSocket is the default one; "" or a non-string is not ours.
     * A cniVersion that is not a plain non-empty string only shapes error replies: the shim's. */
    const char *path = DEFAULT_SOCKET;
    size_t path_len = strlen(DEFAULT_SOCKET);
    if (sock.seen) {
        if (!sock.plain || sock.len == 0)
            return -1;
        path = sock.start;
        path_len = sock.len;
    }
    if (version.seen && (!version.plain || version.len == 0))
        return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (path_len >= sizeof addr.sun_path || memchr(path, '\0', path_len))
        return -1;
    memcpy(addr.sun_path, path, path_len);

    size_t env_len;
    char *env = cni_environ(envp, &env_len);
    if (env == NULL)
        return -1;
    size_t request_len = 13 + env_len + stdin_len;
    char *request = malloc(request_len);
    if (request == NULL) {
        free(env);
        return -1;
    }
    memcpy(request, "FLT1C", 5);
    put_be32(request + 5, (uint32_t)env_len);
    put_be32(request + 9, (uint32_t)stdin_len);
    memcpy(request + 13, env, env_len);
    memcpy(request + 13 + env_len, stdin_buf, stdin_len);
    free(env);

    const char *netns = getenv("CNI_NETNS");
    int fd = netns && *netns ? open(netns, O_RDONLY | O_CLOEXEC) : -1;
    int sk = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int sent_all = 0;
    if (sk >= 0 && connect(sk, (struct sockaddr *)&addr, sizeof addr) == 0) {
        struct iovec iov = {request, request_len};
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } control;
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        if (fd >= 0) {
            memset(&control, 0, sizeof control);
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof control.buf;
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
        }
        ssize_t n;
        do
            n = sendmsg(sk, &msg, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n >= 0) {
            size_t done = (size_t)n;
            while (done < request_len) {
                n = send(sk, request + done, request_len - done, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n < 0)
                    break;
                done += (size_t)n;
            }
            sent_all = done == request_len;
        }
    }
    free(request);
    if (!sent_all) {   /* absent, refusing connections, or gone before the whole request */
        if (fd >= 0)
            close(fd);
        if (sk >= 0)
            close(sk);
        return -1;
    }
    char head[5];
    int got = recv_exact(sk, head, sizeof head);
    int status = -1;
    if (got == 0)
        status = gone_mid_request(&version, "the daemon closed the connection before replying");
    else if (got < 0) {
        /* As the shim: a reset is a ConnectionError (named by its errno), another error is
         * left to the in-process path. */
        int err = -got;
        if (err == ECONNRESET || err == EPIPE || err == ECONNABORTED || err == ECONNREFUSED) {
            char why[16];
            snprintf(why, sizeof why, "%d", err);
            status = gone_mid_request(&version, why);
        }
    } else if ((unsigned char)head[0] != REFUSED) {
        uint32_t len = ((uint32_t)(unsigned char)head[1] << 24) | ((uint32_t)(unsigned char)head[2] << 16)
                       | ((uint32_t)(unsigned char)head[3] << 8) | (uint32_t)(unsigned char)head[4];
        char *payload = malloc(len ? len : 1);
        got = payload ? recv_exact(sk, payload, len) : -ENOMEM;
        if (got == 1) {
            write_all(1, payload, len);
            status = (unsigned char)head[0];
        } else if (got == 0)
            status = gone_mid_request(&version, "the daemon's reply was cut short");
        else if (-got == ECONNRESET || -got == EPIPE || -got == ECONNABORTED || -got == ECONNREFUSED) {
            char why[16];
            snprintf(why, sizeof why, "%d", -got);
            status = gone_mid_request(&version, why);
        }
        free(payload);
    }
    close(sk);
    if (fd >= 0)
        close(fd);
    return status;
}

/* The fast path for ADD, CHECK, DEL (and any other verb the shim would forward). Returns the
 * exit status, or -1 to start the interpreter; stdin, when read, is put back on fd 0. */
static int fast_path(int argc, char **envp)
{
    const char *command = getenv("CNI_COMMAND");
    if (argc > 1 || command == NULL || strcmp(command, "VERSION") == 0)
        return -1;
    char *buf = malloc(MAX_STDIN + 1);
    size_t len = 0;
    if (buf == NULL)
        return -1;
    while (len <= MAX_STDIN) {
        ssize_t n = read(0, buf + len, MAX_STDIN + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)   /* an unreadable stdin ends it, as in the shim's read_stdin */
            break;
        len += (size_t)n;
    }
    int status = len <= MAX_STDIN ? forward(buf, len, envp) : -1;
    if (status < 0) {   /* the shim reads the same bytes from a memfd on fd 0 */
        int mem = memfd_create("flannelette-stdin", MFD_CLOEXEC);
        if (mem < 0 || write_all(mem, buf, len) < 0 || lseek(mem, 0, SEEK_SET) < 0 || dup2(mem, 0) < 0) {
            free(buf);
            return fail("cannot hand the request to the shim");
        }
        close(mem);
    }
    free(buf);
    return status;
}

int main(int argc, char **argv)
{
    int fast = fast_path(argc, environ);
    if (fast >= 0)
        return fast;

    /* The onedir is where the real file lives: runtimes exec it through a symlink. */
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return fail("cannot read /proc/self/exe");
    exe[len] = '\0';
    char onedir[PATH_MAX];
    memcpy(onedir, exe, (size_t)len + 1);
    char *slash = strrchr(onedir, '/');
    if (slash == NULL)
        return fail("cannot tell the install directory");
    *slash = '\0';

    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1;
    if (PyStatus_Exception(Py_PreInitialize(&preconfig)))
        return fail("interpreter pre-initialisation failed");

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.pathconfig_warnings = 0;
    config.module_search_paths_set = 1;
    int ok = add_path(&config, onedir, "_internal/lean") == 0
             && add_path(&config, onedir, LIB_DYNLOAD) == 0
             && !PyStatus_Exception(PyConfig_SetBytesString(&config, &config.home, onedir))
             && !PyStatus_Exception(PyConfig_SetBytesString(&config, &config.executable, exe))
             && !PyStatus_Exception(PyConfig_SetBytesArgv(&config, argc, argv));
    PyStatus status = ok ? Py_InitializeFromConfig(&config) : PyStatus_Error("config");
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        return fail("interpreter initialisation failed");
    /* sys.frozen: the shim hands slow paths to flannelette-full next to sys.executable. */
    return PyRun_SimpleString("import sys\nsys.frozen = True\nimport flannelette_shim\nflannelette_shim.main()\n") ? 1 : 0;
}
