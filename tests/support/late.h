/* What a job's process in the guard tests does when it is continued (SIGCONT): it forks a helper that records
 * its pid, then appends a timestamp (ns since the epoch) to a file, again and again, for a while. A stamp
 * written after the guard's kill began is a process of the job that ran on. Shared by chain.c, groupchain.c,
 * groupcycle.c, sharedgroup.c and contfork.c. Set the four `late_*` settings, then install `on_cont` for SIGCONT;
 * or call `late_in_dir` for the usual ones. */
#include <signal.h>

#include "jobfiles.h"

static char late_pid_path[4096], late_path[4096];
static int late_count, late_period_ms, late_new_session;

static void late_helper(void) {
    if (late_new_session) setsid();
    append(late_pid_path, (long long)getpid());
    for (int i = 0; i < late_count; i++) {
        append(late_path, now_ns());
        pause_ms(late_period_ms);
    }
    _exit(0);
}

static void on_cont(int signal) {
    (void)signal;
    if (fork() == 0) late_helper();
}

/* This process and what it forks ignore SIGHUP and, on SIGCONT, fork a helper that calls setsid(), appends its
 * pid to DIR/late.pid and a timestamp to DIR/late every 10 ms for 30 s. */
static void late_in_dir(void) {
    snprintf(late_pid_path, sizeof late_pid_path, "%s/late.pid", dir);
    snprintf(late_path, sizeof late_path, "%s/late", dir);
    late_count = 3000, late_period_ms = 10, late_new_session = 1;
    signal(SIGHUP, SIG_IGN);
    signal(SIGCONT, on_cont);
}

/* A SIGCONT handler: appends this process's pid to DIR/cont, then forks a helper (`on_cont`). */
static void say_then_fork(int signal) {
    put("cont", (long)getpid());
    on_cont(signal);
}
