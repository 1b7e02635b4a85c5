/* groupchain DIR DEPTH EXTRA (from review, rv292): the main child forks a chain of DEPTH processes, each in a
 * group of its own (setpgid), each the parent of the next; the first of them (a), once the chain is up, forks
 * EXTRA more members of its group. Every process of the job ignores SIGHUP and, on SIGCONT, forks a helper that
 * calls setsid(), appends its pid to DIR/late.pid and appends a timestamp to DIR/late every 10 ms for 30 s.
 * Files: DIR/child.pid, DIR/a.pid, DIR/ready (when all is up). */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char dir[2048];

static void put(const char *name, long value) {
    char path[4096], buf[64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int n = snprintf(buf, sizeof buf, "%ld\n", value);
    (void)!write(fd, buf, n);
    close(fd);
}

static int exists(const char *name) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static void helper(void) {
    setsid();
    put("late.pid", (long)getpid());
    for (int i = 0; i < 3000; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        put("late", (long)ts.tv_sec * 1000000000L + ts.tv_nsec);
        struct timespec s = {0, 10000000};
        nanosleep(&s, 0);
    }
    _exit(0);
}

static void on_cont(int signal) {
    (void)signal;
    if (fork() == 0) helper();
}

static void idle(void) {
    for (;;) pause();
}

static void extras(int n) {
    for (int i = 0; i < n; i++)
        if (fork() == 0) idle();
}

static void wait_for(const char *name) {
    while (!exists(name)) {
        struct timespec s = {0, 2000000};
        nanosleep(&s, 0);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    snprintf(dir, sizeof dir, "%s", argv[1]);
    int depth = atoi(argv[2]), extra = atoi(argv[3]);
    signal(SIGHUP, SIG_IGN);
    signal(SIGCONT, on_cont);
    put("child.pid", (long)getpid());
    if (fork() == 0) {
        setpgid(0, 0);
        put("a.pid", (long)getpid());
        pid_t next = fork();
        if (next == 0) {
            for (int level = 1; level < depth; level++) {
                setpgid(0, 0);
                if (fork() != 0) idle();
            }
            setpgid(0, 0);
            put("deep.ready", 1);
            idle();
        }
        wait_for("deep.ready");
        extras(extra);
        put("ready", 1);
        idle();
    }
    idle();
}
