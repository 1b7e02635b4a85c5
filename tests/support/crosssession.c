/* crosssession DIR WIDE (from review, rv314): groups of the job in a session S1 the job made, and a member of one of
 * them that made a session of its own: no cycle of groups for the kernel, which looks at no group in another session
 * when a process dies. The main child C forks S, which calls setsid(): session S1, group S. S forks G, which makes a
 * group of its own (G's parent S is in group S: G ties it); G forks W, which makes a group of its own (W's parent G is
 * in group G: W alone ties it). W forks H, in group W; H forks K, in group W, then calls setsid(): session S3. K's
 * parent H is in S3, H's parent W in S1: neither ties anything. S forks WIDE processes that idle, in group S (they
 * make each of the guard's rounds longer). The guard must kill W's group before G (W's only tie's parent): waits on
 * children in another session made W and H wait on each other, and the one kill that broke that stall was G's,
 * which orphaned W with W and K held stopped: the kernel continued them. Every process of the job ignores SIGHUP and,
 * on SIGCONT, appends its pid to DIR/cont and forks a helper (late.h). Files: DIR/child.pid, s.pid, g.pid, w.pid,
 * h.pid, k.pid, DIR/ready. */
#include <stdlib.h>

#include "late.h"

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    use_dir(argv[1]);
    late_in_dir();
    signal(SIGCONT, say_then_fork);
    int wide = atoi(argv[2]);
    put("child.pid", (long)getpid());
    if (fork() == 0) {
        /* S */
        if (setsid() < 0) _exit(1);
        put("s.pid", (long)getpid());
        if (fork() == 0) {
            /* G */
            setpgid(0, 0);
            if (fork() == 0) {
                /* W */
                setpgid(0, 0);
                if (fork() == 0) {
                    /* H */
                    if (fork() == 0) {
                        /* K */
                        put("k.pid", (long)getpid());
                        idle();
                    }
                    wait_for("k.pid");
                    if (setsid() < 0) _exit(1);
                    put("h.pid", (long)getpid());
                    idle();
                }
                wait_for("h.pid");
                put("w.pid", (long)getpid());
                idle();
            }
            wait_for("w.pid");
            put("g.pid", (long)getpid());
            idle();
        }
        idle_children(wide);
        wait_for("g.pid");
        put("ready", 1);
        idle();
    }
    idle();
}
