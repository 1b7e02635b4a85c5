/* groupchain DIR DEPTH EXTRA (from review, rv292): the main child forks a chain of DEPTH processes, each in a
 * group of its own (setpgid), each the parent of the next; the first of them (a), once the chain is up, forks
 * EXTRA more members of its group. Every process of the job ignores SIGHUP and, on SIGCONT, forks a helper that
 * calls setsid(), appends its pid to DIR/late.pid and appends a timestamp to DIR/late every 10 ms for 30 s.
 * Files: DIR/child.pid, DIR/a.pid, DIR/ready (when all is up). */
#include <stdlib.h>
#include <sys/stat.h>

#include "late.h"

static char dir[2048];

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

static void idle(void) {
    for (;;) pause();
}

static void extras(int n) {
    for (int i = 0; i < n; i++)
        if (fork() == 0) idle();
}

static void wait_for(const char *name) {
    while (!exists(name)) {
        pause_ms(2);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    snprintf(dir, sizeof dir, "%s", argv[1]);
    snprintf(late_pid_path, sizeof late_pid_path, "%s/late.pid", dir);
    snprintf(late_path, sizeof late_path, "%s/late", dir);
    late_count = 3000, late_period_ms = 10, late_new_session = 1;
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
