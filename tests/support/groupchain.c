/* groupchain DIR DEPTH EXTRA (from review, rv292): the main child forks a chain of DEPTH processes, each in a
 * group of its own (setpgid), each the parent of the next; the first of them (a), once the chain is up, forks
 * EXTRA more members of its group. Every process of the job ignores SIGHUP and, on SIGCONT, forks a helper that
 * calls setsid(), appends its pid to DIR/late.pid and appends a timestamp to DIR/late every 10 ms for 30 s.
 * Files: DIR/child.pid, DIR/a.pid, DIR/ready (when all is up). */
#include <stdlib.h>

#include "late.h"

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    use_dir(argv[1]);
    late_in_dir();
    int depth = atoi(argv[2]), extra = atoi(argv[3]);
    put("child.pid", (long)getpid());
    if (fork() == 0) {
        setpgid(0, 0);
        put("a.pid", (long)getpid());
        idle_chain(depth, 1);
        idle_children(extra);
        put("ready", 1);
        idle();
    }
    idle();
}
