/* An LD_PRELOAD shim (from review, helper-204): a process forked by mpsync that moves into a process group of
 * its own (setpgid(0, 0): the supervised child in prepare_child, an exec credential plugin through std's
 * process_group(0)) is sent SIGTTOU to the group it is leaving, mpsync's, just before it leaves: as a tostop
 * write, or a `kill -TTOU`, to mpsync's group lands between the fork and the setpgid. Only in processes whose
 * program is still mpsync (not yet exec'd). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
int setpgid(pid_t pid, pid_t pgid) {
    if (pid == 0 && pgid == 0 && strcmp(program_invocation_short_name, "mpsync") == 0 && getpid() != getpgrp())
        kill(0, SIGTTOU);
    int (*real)(pid_t, pid_t) = dlsym(RTLD_NEXT, "setpgid");
    return real(pid, pgid);
}
