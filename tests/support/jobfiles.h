/* What the C programs of the guard tests share: files in the directory DIR a test names (argv[1]), which the
 * test and the job's processes wait on. Call `use_dir(argv[1])` first. */
#include <fcntl.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char dir[2048];

static void use_dir(const char *path) {
    snprintf(dir, sizeof dir, "%s", path);
}

/* Appends VALUE and a newline to PATH. */
static void append(const char *path, long long value) {
    char buf[64];
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int n = snprintf(buf, sizeof buf, "%lld\n", value);
    (void)!write(fd, buf, n);
    close(fd);
}

/* Appends VALUE and a newline to DIR/NAME. */
static void put(const char *name, long value) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    append(path, value);
}

static int exists(const char *name) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void pause_ms(int ms) {
    struct timespec s = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&s, 0);
}

/* Waits until DIR/NAME exists. */
static void wait_for(const char *name) {
    while (!exists(name)) pause_ms(2);
}

static void idle(void) {
    for (;;) pause();
}

/* Forks N children that idle. */
static void idle_children(int n) {
    for (int i = 0; i < n; i++)
        if (fork() == 0) idle();
}

/* Forks a chain of DEPTH processes that idle, each the parent of the next, in the caller's group or, if OWN_GROUPS,
 * each in a group of its own; returns once the last one is up (DIR/deep.ready). */
static void idle_chain(int depth, int own_groups) {
    if (fork() == 0) {
        for (int level = 1; level < depth; level++) {
            if (own_groups) setpgid(0, 0);
            if (fork() != 0) idle();
        }
        if (own_groups) setpgid(0, 0);
        put("deep.ready", 1);
        idle();
    }
    wait_for("deep.ready");
}

/* Forks Y, in the caller's group; Y forks X, which joins GROUP: X's parent Y is in another group of the session, so
 * X ties GROUP to it. X writes DIR/x.pid; then X, and Y once it is written, call HOLD, which does not return. */
static void fork_tie(pid_t group, void (*hold)(void)) {
    if (fork() == 0) {
        if (fork() == 0) {
            if (setpgid(0, group) != 0) _exit(1);
            put("x.pid", (long)getpid());
            hold();
        }
        wait_for("x.pid");
        hold();
    }
}

/* How many lines DIR/NAME has (0 if it does not exist). */
static int lines(const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = 0, c;
    while ((c = fgetc(f)) != EOF)
        if (c == '\n') n++;
    fclose(f);
    return n;
}

/* The pid another process wrote in DIR/NAME; exits 1 if there is none. */
static pid_t pid_in(const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (!f || fscanf(f, "%d", &pid) != 1) _exit(1);
    fclose(f);
    return pid;
}

/* Idles two minutes, then exits: a process outside the job, which the guard does not kill, ends by itself. */
static void outside_idle(void) {
    for (int i = 0; i < 6000; i++) pause_ms(20);
    _exit(0);
}

/* Forks T, which joins group H; T forks U (in H), and U forks D, which joins group K: each of H and K has a member
 * whose parent is in the other (the caller is in K). Each writes its pid (DIR/t.pid, u.pid, d.pid) and idles. */
static void fork_crossing(pid_t h, pid_t k) {
    if (fork() != 0) return;
    if (setpgid(0, h) != 0) _exit(1);
    put("t.pid", (long)getpid());
    if (fork() == 0) {
        /* U: in H, its parent T in H. */
        put("u.pid", (long)getpid());
        if (fork() == 0) {
            /* D: joins K. */
            if (setpgid(0, k) != 0) _exit(1);
            put("d.pid", (long)getpid());
            idle();
        }
        idle();
    }
    idle();
}

/* Once DIR/NAME exists, makes this process a child subreaper, says so (DIR/subreaper), and idles. */
static void subreaper_once(const char *name) {
    wait_for(name);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) _exit(1);
    put("subreaper", 1);
    idle();
}
