/* An LD_PRELOAD shim (from review, helper-206). In mpsync's supervised child, forked and not yet exec'd (a
 * process whose program is still mpsync, whose parent is mpsync), a signal lands in a narrow window:
 * - CHILDWINDOW_SETPGID_SIGNAL=N: signal N to the group the child is leaving, mpsync's, just before its
 *   setpgid(0, 0) (a `kill -N -PGID`, a terminal hang-up or a Ctrl-C meant for mpsync's group);
 * - CHILDWINDOW_TCSETPGRP_SIGNAL=N: signal N to the child's own group right after it took the terminal's
 *   foreground (a key typed then: Ctrl-Z, or a hang-up);
 * - CHILDWINDOW_PRCTL_SIGNAL=N: signal N to the child's own group just before its prctl(PR_SET_PDEATHSIG),
 *   once its signals are the defaults and unblocked, before its exec (from review, helper-207).
 * (Not MPSYNC_*: mpsync takes those out of its child's environment.) The guard (also mpsync's child, ignoring
 * everything) may send one too: harmless. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>
static int parent_is_mpsync(void) {
    char path[64], exe[4096];
    snprintf(path, sizeof path, "/proc/%d/exe", (int)getppid());
    ssize_t n = readlink(path, exe, sizeof exe - 1);
    if (n <= 0) return 0;
    exe[n] = 0;
    const char *base = strrchr(exe, '/');
    return strcmp(base ? base + 1 : exe, "mpsync") == 0;
}
static int wanted(const char *name) {
    const char *value = getenv(name);
    if (!value || strcmp(program_invocation_short_name, "mpsync") != 0 || !parent_is_mpsync()) return 0;
    return atoi(value);
}
int setpgid(pid_t pid, pid_t pgid) {
    int (*real)(pid_t, pid_t) = dlsym(RTLD_NEXT, "setpgid");
    int signal = 0;
    if (pid == 0 && pgid == 0 && getpid() != getpgrp()) signal = wanted("CHILDWINDOW_SETPGID_SIGNAL");
    if (signal > 0) kill(0, signal);
    return real(pid, pgid);
}
int tcsetpgrp(int fd, pid_t pgrp) {
    int (*real)(int, pid_t) = dlsym(RTLD_NEXT, "tcsetpgrp");
    int result = real(fd, pgrp);
    int signal = 0;
    if (result == 0 && pgrp == getpid()) signal = wanted("CHILDWINDOW_TCSETPGRP_SIGNAL");
    if (signal > 0) kill(0, signal);
    return result;
}
int prctl(int option, ...) {
    va_list args;
    va_start(args, option);
    unsigned long a2 = va_arg(args, unsigned long), a3 = va_arg(args, unsigned long),
                  a4 = va_arg(args, unsigned long), a5 = va_arg(args, unsigned long);
    va_end(args);
    int (*real)(int, ...) = dlsym(RTLD_NEXT, "prctl");
    int signal = 0;
    /* The supervised child only: in a group of its own by then. */
    if (option == PR_SET_PDEATHSIG && getpid() == getpgrp()) signal = wanted("CHILDWINDOW_PRCTL_SIGNAL");
    if (signal > 0) kill(0, signal);
    return real(option, a2, a3, a4, a5);
}
