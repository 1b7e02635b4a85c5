/* guardgroup DIR N [G fill] (from review, rv302, rv304): job members that join the guard's own process group. The main
 * child C finds the guard (its parent's child named mpsync-guard) and the guard's group P. With G, C first makes G
 * groups of one process each (the guard anchors groups in pid order). C forks Y (stays in C's group G); Y forks X,
 * which joins P: X's parent Y is in another group of the session, so once mpsync is dead (the guard then init's) X
 * alone ties P to the session. Then C forks N processes W that join P too; C dies with mpsync (its parent-death
 * signal), so the W are init's and tie nothing. With "fill", C then forks idle processes until fork(2) fails (a
 * process limit: `ulimit -u`). Every process of the job ignores SIGHUP and, on SIGCONT, appends its pid to DIR/cont,
 * then forks a helper (see late.h) in a session of its own. Files: DIR/child.pid, DIR/x.pid, DIR/w.pid (one line a
 * W), DIR/ready. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "late.h"

/* The group of the child of MPSYNC named mpsync-guard, or 0. */
static pid_t guard_group(pid_t mpsync) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;
    while (d && (e = readdir(d))) {
        char path[300], buf[1024];
        int pid = atoi(e->d_name);
        if (pid <= 0) continue;
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *open = strchr(buf, '('), *close = strrchr(buf, ')');
        if (!open || !close) continue;
        *close = 0;
        int ppid = 0, pgrp = 0;
        char state;
        if (sscanf(close + 2, "%c %d %d", &state, &ppid, &pgrp) != 3) continue;
        if (ppid == mpsync && strcmp(open + 1, "mpsync-guard") == 0) found = pgrp;
    }
    if (d) closedir(d);
    return found;
}

/* A process continued says so first: the helper's fork may fail at a process limit. */
int main(int argc, char **argv) {
    if (argc != 3 && argc != 5) return 2;
    use_dir(argv[1]);
    late_in_dir();
    signal(SIGCONT, say_then_fork);
    int n = atoi(argv[2]), groups = argc == 5 ? atoi(argv[3]) : 0, fill = argc == 5 && strcmp(argv[4], "fill") == 0;
    put("child.pid", (long)getpid());
    pid_t guard = guard_group(getppid());
    if (guard <= 0) return 3;
    for (int i = 0; i < groups; i++) {
        if (fork() == 0) {
            setpgid(0, 0);
            idle();
        }
    }
    fork_tie(guard, idle);
    wait_for("x.pid");
    for (int i = 0; i < n; i++) {
        if (fork() == 0) {
            if (setpgid(0, guard) != 0) _exit(1);
            put("w.pid", (long)getpid());
            idle();
        }
    }
    while (fill) {
        pid_t filler = fork();
        if (filler == 0) idle();
        if (filler < 0) break;
    }
    put("ready", 1);
    idle();
}
