/* baton_cc.c: the native `baton cc`, a C port of cli/cc.py (docs/internals.md, "The native wrapper").

   Why: `baton cc` runs once per compile; Python's start-up alone (~25 ms of
   CPU) is more than a small compile costs. This program does what cli/cc.py
   does, in the same order and with the same words, in ~1 ms:

   - Invoked as a compiler name (cc, gcc, ... : the symlinks `baton run` puts
     in the wrapper directory), or as `baton-cc COMPILER ARGS...`.
   - The real compiler is the first one on PATH outside the wrapper directory
     (cli.cc.real_compiler; also never this program itself, whatever the
     directory: a wrapper that found itself would spawn itself for ever).
   - Outside `baton run` ($BATON_RUN_DIR unset or empty): execve the compiler.
   - Inside: cli.cc_args.plan decides from the command line alone (ported
     below; tests/test_native_cc.py checks it against the Python one on
     every rule); a job that may go remote is sent to `baton run` over the
     run's socket (framing: cli/ccwire.py); its answer is the object, the
     diagnostics and the exit code, or "compile it locally, because ...".
   - One JSON line per compile (-c) appended to $BATON_RUN_DIR/jobs.jsonl with
     one O_APPEND write, byte for byte what cli.cc.record writes (the floats
     aside: the same values, printed with 3 decimals).

   `baton-cc --plan ARGV...` prints plan(ARGV) (NUL-separated, for the tests).
   Every syscall is checked; reads are bounded (a frame of at most MAX_FRAME).
   One file of ~700 lines, over the ~400 of a module: one translation unit is
   one compiler call at `baton run` start (cli/native/__init__.py), and its
   parts (plan, PATH search, wire, record) are small and in cli/cc.py's order. */
#define _XOPEN_SOURCE 700 /* POSIX.1-2008 with realpath */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_FRAME (512ULL * 1024 * 1024) /* cli.ccwire.MAX_FRAME */
#define SOCKET_NAME "cc.sock"            /* cli.ccwire.SOCKET */
#define JOBS_LOG "jobs.jsonl"            /* cli.cc.JOBS_LOG */

static const char *const COMPILER_NAMES[] = {"cc", "gcc", "g++", "c++", "clang", "clang++", NULL};

/* ---- small helpers ------------------------------------------------------------------------ */

static void out_of_memory(void) {
    static const char msg[] = "baton cc: out of memory\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(1);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) out_of_memory();
    return q;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

static char *xprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    char *s = xrealloc(NULL, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

struct buf {
    char *data;
    size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n) {
    if (n > SIZE_MAX / 4 - b->len) out_of_memory();
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->data = xrealloc(b->data, b->cap);
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_u32(struct buf *b, uint32_t v) {
    unsigned char x[4] = {v >> 24, v >> 16, v >> 8, v};
    buf_add(b, x, 4);
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int starts(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

static int in_list(const char *s, const char *const *list) {
    for (; *list; list++)
        if (strcmp(s, *list) == 0) return 1;
    return 0;
}

static int starts_any(const char *s, const char *const *list) {
    for (; *list; list++)
        if (starts(s, *list)) return 1;
    return 0;
}

/* Python's str of an OSError: "[Errno N] text". */
static char *os_error(int err) { return xprintf("[Errno %d] %s", err, strerror(err)); }

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static double now(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return 0.0;
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- cli.cc_args.plan --------------------------------------------------------------------- */

static const char *const PREPROCESSOR_WITH_VALUE[] = {
    "-I", "-D", "-U", "-include", "-imacros", "-isystem", "-idirafter", "-iquote", "-iprefix", "-iwithprefix",
    "-iwithprefixbefore", "-isysroot", "-imultilib", NULL};
static const char *const DEPENDENCY_WITH_VALUE[] = {"-MF", "-MT", "-MQ", NULL};
static const char *const DEPENDENCY_FLAGS[] = {"-MD", "-MMD", "-MP", NULL};
static const char *const PREPROCESSOR_FLAGS[] = {"-nostdinc", "-undef", "-trigraphs", NULL};
static const char *const BOTH_PREFIXES[] = {"-O", "-g", "-f", "-m", "-W", "-std=", "-ansi", "-pedantic", "-w",
                                            "-pipe", "-pthread", "--param", NULL};
static const char *const UNSAFE_PREFIXES[] = {
    "-fplugin", "-B", "-specs", "-wrapper", "-fprofile", "-fauto-profile", "-fbranch-probabilities",
    "-ftest-coverage", "-fcoverage", "-fcreate-profile", "-fdump", "-fsave-optimization-record", "-fopt-info",
    "-fstack-usage", "-fcallgraph-info", "-save-temps", "-Xclang", "-Xassembler", "-Xpreprocessor", "-Xlinker",
    "-Wa,", "-Wp,", "-Wl,", "-aux-info", "-fdebug-prefix-map", "-ffile-prefix-map", "-fmacro-prefix-map",
    "-frandom-seed", "-flto", "-fsplit-dwarf", "-gsplit-dwarf", "-fmodules", "--sysroot", "-iplugindir", "-print-",
    "-dump", "-###", "-v", "--version", "--help", "-x", "-fsanitize-blacklist", "-fsanitize-ignorelist",
    "-fdiagnostics-format=sarif", NULL};
static const char *const NATIVE[] = {"-march=native", "-mtune=native", "-mcpu=native", NULL};
static const char *const NO_OBJECT[] = {"-E", "-S", "-M", "-MM", "-MG", NULL};
static const char *const SOURCE_SUFFIXES[] = {".c", ".cc", ".cp", ".cxx", ".cpp", ".CPP", ".c++", ".C", NULL};

/* os.path.splitext's extension: from the last dot of the base name, leading dots not counting. */
static const char *extension(const char *path) {
    const char *name = base_name(path), *dot = strrchr(name, '.');
    if (!dot) return "";
    for (const char *p = name; p < dot; p++)
        if (*p != '.') return dot;
    return "";
}

static int has_prefix_longer(const char *arg, const char *const *list) {
    for (; *list; list++)
        if (starts(arg, *list) && strlen(arg) > strlen(*list)) return 1;
    return 0;
}

struct plan {
    const char *source; /* NULL: compile here as asked, because of `reason` */
    char *output, *reason;
};

static struct plan local_plan(char *reason) { return (struct plan){NULL, NULL, reason}; }

static struct plan plan(int argc, char **argv) {
    if (argc < 2) return local_plan(xstrdup("no arguments"));
    const char *source = NULL, *output = NULL;
    const char *lone = NULL; /* the first of -MF, -MT, -MQ, -MP: GCC refuses it without -MD/-MMD */
    int sources = 0, compile_only = 0, dep_mode = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        int value_next = i + 1 < argc;
        if (strcmp(arg, "-c") == 0) {
            compile_only = 1;
        } else if (strcmp(arg, "-o") == 0) {
            if (!value_next) return local_plan(xstrdup("-o without a file"));
            output = argv[++i];
        } else if (starts(arg, "-o")) {
            output = arg + 2;
        } else if (in_list(arg, NO_OBJECT)) {
            return local_plan(xprintf("%s asks for no object", arg));
        } else if (arg[0] == '@') {
            return local_plan(xstrdup("a response file (@file)"));
        } else if (strcmp(arg, "-") == 0) {
            return local_plan(xstrdup("the source comes from stdin"));
        } else if (in_list(arg, NATIVE)) {
            return local_plan(xprintf("%s depends on this machine's processor", arg));
        } else if (starts_any(arg, UNSAFE_PREFIXES)) {
            return local_plan(xprintf("%.*s reads or writes other files or runs other programs",
                                      (int)strcspn(arg, "="), arg));
        } else if (in_list(arg, DEPENDENCY_FLAGS)) { /* `baton run` sends them with the job */
            if (strcmp(arg, "-MP") == 0) {
                if (!lone) lone = "-MP";
            } else {
                dep_mode = 1;
            }
        } else if (in_list(arg, DEPENDENCY_WITH_VALUE) || has_prefix_longer(arg, DEPENDENCY_WITH_VALUE)) {
            if (in_list(arg, DEPENDENCY_WITH_VALUE)) {
                if (!value_next) return local_plan(xprintf("%s without a value", arg));
                i++;
            }
            if (!lone) lone = starts(arg, "-MF") ? "-MF" : starts(arg, "-MT") ? "-MT" : "-MQ";
        } else if (in_list(arg, PREPROCESSOR_WITH_VALUE)) {
            if (!value_next) return local_plan(xprintf("%s without a value", arg));
            i++;
        } else if (starts(arg, "-I") || starts(arg, "-D") || starts(arg, "-U") ||
                   has_prefix_longer(arg, PREPROCESSOR_WITH_VALUE + 3)) {
        } else if (in_list(arg, PREPROCESSOR_FLAGS)) {
        } else if (strcmp(arg, "--param") == 0) {
            if (!value_next) return local_plan(xstrdup("--param without a value"));
            i++;
        } else if (starts_any(arg, BOTH_PREFIXES)) {
        } else if (arg[0] == '-') {
            return local_plan(xprintf("%s is a flag Baton does not know", arg));
        } else {
            if (!in_list(extension(arg), SOURCE_SUFFIXES))
                return local_plan(xprintf("%s is not a C or C++ source (a link, or another language)", arg));
            source = arg;
            sources++;
        }
    }
    if (!compile_only) return local_plan(xstrdup("no -c: a link"));
    if (sources != 1) return local_plan(xstrdup(sources ? "several sources" : "no source"));
    if (lone && !dep_mode) return local_plan(xprintf("%s without -MD or -MMD", lone));
    struct plan p = {source, NULL, NULL};
    if (output) {
        p.output = xstrdup(output);
    } else { /* splitext(basename(source))[0] + ".o" */
        const char *name = base_name(source);
        p.output = xprintf("%.*s.o", (int)(strlen(name) - strlen(extension(name))), name);
    }
    return p;
}

/* ---- the real compiler (cli.cc.real_compiler) --------------------------------------------- */

static char *absolute(const char *path) {
    if (path[0] == '/') return xstrdup(path);
    char *cwd = getcwd(NULL, 0);
    if (!cwd) return xstrdup(path);
    char *joined = xprintf("%s/%s", cwd, path);
    free(cwd);
    return joined;
}

/* cli.cc.wrapper_dir: $BATON_WRAPPER_DIR, else $XDG_CACHE_HOME or ~/.cache, then baton/wrappers. */
static char *wrapper_dir(void) {
    const char *explicit = getenv("BATON_WRAPPER_DIR");
    if (explicit && *explicit) return absolute(explicit);
    const char *cache = getenv("XDG_CACHE_HOME");
    if (cache && *cache) return xprintf("%s/baton/wrappers", cache);
    const char *home = getenv("HOME");
    if (!home) {
        struct passwd *pw = getpwuid(getuid());
        home = pw ? pw->pw_dir : "";
    }
    return xprintf("%s/.cache/baton/wrappers", home);
}

static int executable_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

static char *real_compiler(const char *name) {
    if (strchr(name, '/')) return xstrdup(name);
    char *dir = wrapper_dir();
    char *skip = realpath(dir, NULL); /* NULL: no such directory, nothing to skip */
    free(dir);
    char *self = realpath("/proc/self/exe", NULL);
    const char *path = getenv("PATH");
    char *found = NULL;
    for (const char *p = path ? path : ""; !found;) {
        size_t n = strcspn(p, ":");
        if (n) {
            char *directory = xprintf("%.*s", (int)n, p);
            char *real = realpath(directory, NULL);
            if (!(skip && real && strcmp(real, skip) == 0)) {
                char *candidate = xprintf("%s/%s", directory, name);
                char *resolved = NULL;
                if (executable_file(candidate) &&
                    !(self && (resolved = realpath(candidate, NULL)) && strcmp(resolved, self) == 0))
                    found = candidate;
                else
                    free(candidate);
                free(resolved);
            }
            free(real);
            free(directory);
        }
        if (!p[n]) break;
        p += n + 1;
    }
    free(skip);
    free(self);
    return found;
}

/* ---- the wire (cli/ccwire.py) ------------------------------------------------------------- */

static void put_field(struct buf *b, const char *key, char tag, const char *value, size_t n) {
    buf_u32(b, (uint32_t)strlen(key));
    buf_str(b, key);
    buf_add(b, &tag, 1);
    buf_u32(b, (uint32_t)n);
    buf_add(b, value, n);
}

static void put_item(struct buf *b, const char *s, size_t n) {
    buf_u32(b, (uint32_t)n);
    buf_add(b, s, n);
}

/* {"argv": [...], "cwd": cwd, "env": {...}} as one frame. */
static struct buf request(char **argv, const char *cwd) {
    struct buf items = {0}, frame = {0}, body = {0};
    for (char **a = argv; *a; a++) put_item(&items, *a, strlen(*a));
    put_field(&body, "argv", 'l', items.data, items.len);
    put_field(&body, "cwd", 's', cwd, strlen(cwd));
    items.len = 0;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        put_item(&items, *e, (size_t)(eq - *e));
        put_item(&items, eq + 1, strlen(eq + 1));
    }
    put_field(&body, "env", 'd', items.data, items.len);
    free(items.data);
    unsigned char length[8];
    for (int i = 0; i < 8; i++) length[i] = (unsigned char)((uint64_t)body.len >> (56 - 8 * i));
    buf_add(&frame, length, 8);
    buf_add(&frame, body.data, body.len);
    free(body.data);
    return frame;
}

/* 0, or -1 with *why set: a read error, or the other end closing before n bytes. */
static int read_exactly(int fd, char *p, size_t n, char **why) {
    while (n) {
        ssize_t r = read(fd, p, n > (1 << 20) ? (1 << 20) : n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            *why = os_error(errno);
            return -1;
        }
        if (r == 0) {
            *why = xstrdup("the other end closed the connection mid-frame");
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

struct reply {
    char *helper, *local;   /* NUL-terminated copies */
    int has_code, has_core; /* exit_code given; core given (not None) */
    long long exit_code, core;
    int has_core_started, has_core_finished; /* when the job held the core, unix time in ms */
    long long core_started_ms, core_finished_ms;
    const char *object, *diagnostics; /* into the frame */
    size_t object_len, diagnostics_len;
};

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static long long get_i64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return (long long)v;
}

/* The reply's fields; 0, or -1 with *why set for a malformed frame. Unknown keys are skipped. */
static int parse_reply(const char *frame, size_t len, struct reply *r, char **why) {
    const unsigned char *p = (const unsigned char *)frame, *end = p + len;
    while (p < end) {
        if (end - p < 4) goto bad;
        uint32_t klen = get_u32(p);
        p += 4;
        if ((size_t)(end - p) < (size_t)klen + 5) goto bad;
        const char *key = (const char *)p;
        p += klen;
        char tag = (char)*p++;
        uint32_t vlen = get_u32(p);
        p += 4;
        if ((size_t)(end - p) < vlen) goto bad;
        const char *value = (const char *)p;
#define KEY(name) (klen == strlen(name) && memcmp(key, name, klen) == 0)
        if ((KEY("helper") || KEY("local")) && tag == 's') {
            char **slot = KEY("helper") ? &r->helper : &r->local;
            free(*slot);
            *slot = xprintf("%.*s", (int)vlen, value);
            if (memchr(value, 0, vlen)) goto bad;
        } else if ((KEY("exit_code") || KEY("core")) && tag == 'i' && vlen == 8) {
            if (KEY("core")) r->has_core = 1, r->core = get_i64(p);
            else r->has_code = 1, r->exit_code = get_i64(p);
        } else if ((KEY("core_started_ms") || KEY("core_finished_ms")) && tag == 'i' && vlen == 8) {
            if (KEY("core_started_ms")) r->has_core_started = 1, r->core_started_ms = get_i64(p);
            else r->has_core_finished = 1, r->core_finished_ms = get_i64(p);
        } else if (KEY("object") && tag == 'b') {
            r->object = value, r->object_len = vlen;
        } else if (KEY("diagnostics") && tag == 'b') {
            r->diagnostics = value, r->diagnostics_len = vlen;
        }
#undef KEY
        p += vlen;
    }
    return 0;
bad:
    *why = xstrdup("not a frame: a field runs past its end");
    return -1;
}

/* Sends the job; 0 with *reply filled (and *frame to free), or -1 with *why. */
static int ask(const char *run_dir, char **argv, const char *cwd, struct reply *r, char **frame, char **why) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char *path = xprintf("%s/%s", run_dir, SOCKET_NAME);
    size_t plen = strlen(path);
    if (plen >= sizeof addr.sun_path) {
        free(path);
        *why = xstrdup("AF_UNIX path too long");
        return -1;
    }
    memcpy(addr.sun_path, path, plen + 1);
    free(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *why = os_error(errno);
        return -1;
    }
    int rc = -1;
    struct buf out = request(argv, cwd);
    unsigned char length[8];
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        *why = os_error(errno);
        goto done;
    }
    for (size_t sent = 0; sent < out.len;) {
        ssize_t w = send(fd, out.data + sent, out.len - sent, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            *why = os_error(errno);
            goto done;
        }
        sent += (size_t)w;
    }
    if (read_exactly(fd, (char *)length, 8, why) != 0) goto done;
    uint64_t size = (uint64_t)get_i64(length);
    if (size > MAX_FRAME) {
        *why = xprintf("a frame of %llu bytes", (unsigned long long)size);
        goto done;
    }
    *frame = xrealloc(NULL, (size_t)size);
    if (read_exactly(fd, *frame, (size_t)size, why) != 0 || parse_reply(*frame, (size_t)size, r, why) != 0) goto done;
    rc = 0;
done:
    free(out.data);
    (void)close(fd); /* the exchange is over (or failed already): nothing a close error could change */
    return rc;
}

/* ---- compiling and recording -------------------------------------------------------------- */

static int compile_locally(char **argv) {
    pid_t pid;
    int err = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
    if (err) {
        char *msg = xprintf("baton cc: cannot run %s: %s\n", argv[0], strerror(err));
        (void)write_all(2, msg, strlen(msg));
        free(msg);
        return 127;
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return 127; /* not our child any more: cannot happen */
    return WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
}

/* cli.cc._json of a str: what Python writes for these bytes decoded with surrogateescape. */
static void json_string(struct buf *b, const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    buf_str(b, "\"");
    while (*p) {
        unsigned c = *p;
        size_t n = 0; /* length of a valid UTF-8 sequence here, 0 if none */
        if (c < 0x80) n = 1;
        else if (c >= 0xc2 && c <= 0xdf) n = (p[1] & 0xc0) == 0x80 ? 2 : 0;
        else if (c >= 0xe0 && c <= 0xef) {
            unsigned lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
            n = p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 ? 3 : 0;
        } else if (c >= 0xf0 && c <= 0xf4) {
            unsigned lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
            n = p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 && (p[3] & 0xc0) == 0x80 ? 4 : 0;
        }
        if (n == 0) { /* an undecodable byte: a lone surrogate U+DC80.. in Python */
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", 0xdc00 + c);
            buf_str(b, esc);
            n = 1;
        } else if (n == 1 && (c < 0x20 || c == '"' || c == '\\')) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            buf_str(b, esc);
        } else {
            buf_add(b, p, n);
        }
        p += n;
    }
    buf_str(b, "\"");
}

/* cli.cc.record: one line, one O_APPEND write. `placed`: the helper's reply (its core, and when the
   job held it), NULL for a local job. */
static int record(const char *run_dir, const char *source, const char *helper, double started, double finished,
                  int code, const char *compiler, const char *why, const struct reply *placed) {
    struct buf b = {0};
    char *num;
    buf_str(&b, "{\"source\":");
    if (source) json_string(&b, source);
    else buf_str(&b, "null");
    buf_str(&b, ",\"helper\":");
    json_string(&b, helper);
    num = xprintf(",\"started\":%.3f,\"finished\":%.3f,\"duration\":%.3f,\"exit_code\":%d,\"compiler\":", started,
                  finished, finished - started, code);
    buf_str(&b, num);
    free(num);
    json_string(&b, compiler);
    if (why) {
        buf_str(&b, ",\"why_local\":");
        json_string(&b, why);
    } else if (placed) {
        if (placed->has_core) {
            num = xprintf(",\"core\":%lld", placed->core);
            buf_str(&b, num);
            free(num);
        }
        if (placed->has_core_started && placed->has_core_finished) {
            num = xprintf(",\"core_started\":%.3f,\"core_finished\":%.3f", placed->core_started_ms / 1000.0,
                          placed->core_finished_ms / 1000.0);
            buf_str(&b, num);
            free(num);
        }
    }
    buf_str(&b, "}\n");
    char *path = xprintf("%s/%s", run_dir, JOBS_LOG);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    int err = 0;
    if (fd < 0) {
        err = errno;
    } else {
        ssize_t w;
        do w = write(fd, b.data, b.len);
        while (w < 0 && errno == EINTR);
        if (w != (ssize_t)b.len) err = w < 0 ? errno : EIO;
        if (close(fd) != 0 && !err && errno != EINTR) err = errno;
    }
    int rc = err ? -1 : 0;
    if (err) {
        char *msg = xprintf("baton cc: cannot write the job record %s: %s\n", path, strerror(err));
        (void)write_all(2, msg, strlen(msg));
        free(msg);
    }
    free(path);
    free(b.data);
    return rc;
}

/* The helper's object where the compile would write it (through a temporary file: a reader
   never sees half an object); or, when the compile failed, no object, as the compiler leaves none. */
static int deliver(const char *cwd, const char *output, const struct reply *r) {
    char *path = output[0] == '/' ? xstrdup(output) : xprintf("%s%s%s", cwd, cwd[strlen(cwd) - 1] == '/' ? "" : "/",
                                                                 output);
    int rc = 0;
    if (r->exit_code == 0) {
        char *tmp = xprintf("%s.baton-%ld", path, (long)getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd < 0 || write_all(fd, r->object, r->object_len) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
            int err = errno;
            char *msg = xprintf("baton cc: cannot write %s: %s\n", path, strerror(err));
            (void)write_all(2, msg, strlen(msg));
            free(msg);
            (void)unlink(tmp);
            rc = -1;
        }
        free(tmp);
    } else if (unlink(path) != 0 && errno != ENOENT) {
        char *msg = xprintf("baton cc: cannot remove %s: %s\n", path, strerror(errno));
        (void)write_all(2, msg, strlen(msg));
        free(msg);
        rc = -1;
    }
    free(path);
    return rc;
}

/* ---- main (cli.cc.main) ------------------------------------------------------------------- */

static int print_plan(int argc, char **argv) {
    struct plan p = plan(argc, argv);
    struct buf b = {0};
    if (p.source) {
        buf_add(&b, "remote", 7);
        buf_add(&b, p.source, strlen(p.source) + 1);
        buf_add(&b, p.output, strlen(p.output) + 1);
    } else {
        buf_add(&b, "local", 6);
        buf_add(&b, p.reason, strlen(p.reason) + 1);
    }
    int rc = write_all(1, b.data, b.len) == 0 ? 0 : 1;
    free(b.data);
    free(p.output);
    free(p.reason);
    return rc;
}

int main(int argc, char **argv) {
    char **args = argv;
    int nargs = argc;
    if (argc < 1 || !in_list(base_name(argv[0]), COMPILER_NAMES)) { /* `baton-cc COMPILER ARGS...` */
        if (argc >= 2 && strcmp(argv[1], "--plan") == 0) return print_plan(argc - 2, argv + 2);
        args = argv + 1;
        nargs = argc - 1;
    }
    if (nargs < 1) {
        static const char usage[] = "usage: baton cc COMPILER ARGS...\n";
        (void)write_all(2, usage, sizeof usage - 1);
        return 2;
    }
    const char *name = args == argv ? base_name(argv[0]) : args[0];
    char *compiler = real_compiler(name);
    if (!compiler) {
        char *msg = xprintf("baton cc: no compiler named '%s' on PATH\n", name);
        (void)write_all(2, msg, strlen(msg));
        free(msg);
        return 127;
    }
    char **cargv = xrealloc(NULL, sizeof *cargv * ((size_t)nargs + 1));
    cargv[0] = compiler;
    for (int i = 1; i < nargs; i++) cargv[i] = args[i];
    cargv[nargs] = NULL;
    const char *run_dir = getenv("BATON_RUN_DIR");
    if (!run_dir || !*run_dir) { /* outside `baton run`: the compiler itself, nothing in between */
        execve(compiler, cargv, environ);
        int err = errno;
        char *msg = xprintf("baton cc: cannot run %s: %s\n", compiler, strerror(err));
        (void)write_all(2, msg, strlen(msg));
        free(msg);
        free(cargv);
        free(compiler);
        return err == ENOENT ? 127 : 126;
    }
    struct plan decided = plan(nargs, cargv);
    double started = now();
    const char *local_only = getenv("BATON_RUN_LOCAL_ONLY");
    const char *helper = NULL, *why = decided.reason;
    char *owned_why = NULL, *frame = NULL, *cwd = NULL;
    struct reply reply = {0};
    int code = 0, undelivered = 0;
    if (!decided.source) {
    } else if (local_only && *local_only) {
        why = "baton run --local-only";
    } else {
        char *sock = xprintf("%s/%s", run_dir, SOCKET_NAME);
        struct stat st;
        int present = stat(sock, &st) == 0;
        free(sock);
        if (!present) {
            why = "baton run serves no helper cores";
        } else if (!(cwd = getcwd(NULL, 0))) {
            why = owned_why = xprintf("baton run did not answer: %s", strerror(errno));
        } else {
            char *failed = NULL;
            if (ask(run_dir, cargv, cwd, &reply, &frame, &failed) != 0) {
                why = owned_why = xprintf("baton run did not answer: %s", failed);
            } else if (!reply.helper) {
                why = reply.local && *reply.local ? reply.local : "baton run said so";
            } else if (!reply.has_code) {
                why = owned_why = xstrdup("baton run did not answer: a reply without an exit code");
            } else {
                helper = reply.helper;
                code = (int)reply.exit_code;
                /* An object it cannot write: said why; exit 1 and no record, as cli/cc.py's exception. */
                undelivered = deliver(cwd, decided.output, &reply) != 0;
                if (!undelivered)
                    (void)write_all(2, reply.diagnostics ? reply.diagnostics : "", reply.diagnostics_len);
            }
            free(failed);
        }
    }
    if (!helper) code = compile_locally(cargv);
    double finished = now();
    int rc = undelivered ? 1 : code;
    for (char **a = cargv; *a && !undelivered; a++)
        if (strcmp(*a, "-c") == 0) { /* a compile; links and other steps are not jobs */
            if (record(run_dir, decided.source, helper ? helper : "local", started, finished, code,
                       base_name(compiler), helper ? NULL : why, helper ? &reply : NULL) != 0)
                rc = 1;
            break;
        }
    free(owned_why);
    free(frame);
    free(cwd);
    free(reply.helper);
    free(reply.local);
    free(decided.output);
    free(decided.reason);
    free(cargv);
    free(compiler);
    return rc;
}
