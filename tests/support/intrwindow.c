/* An LD_PRELOAD shim (from review, helper-204): as mpsync's child, forked and not yet exec'd, takes the
 * terminal's foreground (tcsetpgrp in prepare_child), a Ctrl-C comes: SIGINT to the new foreground group, the
 * child's. Only in a process that is still mpsync and whose parent is mpsync (the supervised child). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
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
int tcsetpgrp(int fd, pid_t pgrp) {
    int (*real)(int, pid_t) = dlsym(RTLD_NEXT, "tcsetpgrp");
    int result = real(fd, pgrp);
    if (result == 0 && pgrp == getpid() && strcmp(program_invocation_short_name, "mpsync") == 0
        && parent_is_mpsync())
        kill(0, SIGINT);
    return result;
}
