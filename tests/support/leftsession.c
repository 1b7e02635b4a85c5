/* leftsession DIR K L (from review, rv315): a process C of the job that made a session of its own, leaving its child D
 * behind, in a group of its own, in a session S of the job whose leader M is a child subreaper. The main child forks
 * M, which becomes a child subreaper and calls setsid(): session S, group M. M forks C; C forks D, which makes a group of its
 * own and forks E (in D's group); then C calls setsid(): D's parent C is in another session, and D ties nothing. E
 * forks a chain of L processes, each in a group of its own and the parent of the next; M forks one of K (K < L): the
 * guard kills M after the K chain, D's group after the L chain. C's death makes D the subreaper M's child, and D then
 * ties its group; M's death would orphan it. So C must wait for D's group, as any parent for a child its session
 * left behind. Every process of the job ignores SIGHUP and, on SIGCONT, appends its pid to DIR/cont and forks a
 * helper (late.h). Files: DIR/child.pid, m.pid, c.pid, d.pid, e.pid, DIR/ready. */
#include <stdlib.h>

#include "late.h"

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    use_dir(argv[1]);
    late_in_dir();
    signal(SIGCONT, say_then_fork);
    int k = atoi(argv[2]), l = atoi(argv[3]);
    put("child.pid", (long)getpid());
    if (fork() == 0) {
        /* M */
        if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) _exit(1);
        if (setsid() < 0) _exit(1);
        put("m.pid", (long)getpid());
        if (fork() == 0) {
            /* C */
            if (fork() == 0) {
                /* D */
                setpgid(0, 0);
                if (fork() == 0) {
                    /* E */
                    put("e.pid", (long)getpid());
                    idle_chain(l, 1);
                    put("e.ready", 1);
                    idle();
                }
                wait_for("e.ready");
                put("d.pid", (long)getpid());
                idle();
            }
            wait_for("d.pid");
            if (setsid() < 0) _exit(1);
            put("c.pid", (long)getpid());
            idle();
        }
        wait_for("c.pid");
        char path[4096];
        snprintf(path, sizeof path, "%s/deep.ready", dir);
        unlink(path);
        idle_chain(k, 1);
        put("ready", 1);
        idle();
    }
    idle();
}
