/* groupcycle DIR EXTRA (from review, rv292): a job whose process groups tie each other to the session. The main
 * child (group G0) forks a, which makes group G1; a forks b, which makes group G2; b forks c (G2); c forks d,
 * which joins G1. So G1's member a is the parent of G2's member b, and G2's member c the parent of G1's member d.
 * d then forks EXTRA members of G1, and after them c forks EXTRA members of G2. Every process of the job ignores
 * SIGHUP and, on SIGCONT, forks a helper (see late.h) that calls setsid(), appends its pid to DIR/late.pid and a
 * timestamp to DIR/late every 10 ms for 30 s. Files: DIR/child.pid, DIR/a.pid, DIR/ready (when all is up). */
#include <stdlib.h>

#include "late.h"

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    use_dir(argv[1]);
    late_in_dir();
    int extra = atoi(argv[2]);
    put("child.pid", (long)getpid());
    if (fork() == 0) {
        /* a */
        setpgid(0, 0);
        pid_t g1 = getpid();
        put("a.pid", (long)g1);
        if (fork() == 0) {
            /* b */
            setpgid(0, 0);
            if (fork() == 0) {
                /* c */
                if (fork() == 0) {
                    /* d */
                    if (setpgid(0, g1) != 0) _exit(3);
                    idle_children(extra);
                    put("d.ready", 1);
                    idle();
                }
                wait_for("d.ready");
                idle_children(extra);
                put("ready", 1);
                idle();
            }
            idle();
        }
        idle();
    }
    idle();
}
