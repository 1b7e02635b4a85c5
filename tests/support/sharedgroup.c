/* sharedgroup DIR DEPTH (from review, rv295): a job one of whose process groups is shared with a process that is
 * not the job's: mpsync's own group S, with mpsync in a session of its own (ssh, systemd, a container), so that
 * nothing outside the job ties S to the session. The main child C forks Y (stays in C's group G); Y forks X, which
 * joins S: X's parent is in G, so X alone ties S to the session. Then C itself joins S and forks a chain of DEPTH
 * processes in S, each the parent of the next (none of them ties S: their parents are in S). Every process of the
 * job ignores SIGHUP and, on SIGCONT, forks a helper (see late.h) that calls setsid(), appends its pid to
 * DIR/late.pid and a timestamp to DIR/late every 10 ms for 30 s. Files: DIR/child.pid, DIR/x.pid, DIR/ready. */
#include <stdlib.h>

#include "late.h"

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    use_dir(argv[1]);
    late_in_dir();
    int depth = atoi(argv[2]);
    put("child.pid", (long)getpid());
    pid_t shared = getpgid(getppid());
    fork_tie(shared, idle);
    wait_for("x.pid");
    if (setpgid(0, shared) != 0) return 1;
    idle_chain(depth, 0);
    put("ready", 1);
    idle();
}
