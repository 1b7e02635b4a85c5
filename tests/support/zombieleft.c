/* zombieleft DIR N (from review, rv316): a zombie whose parent left its session. The main child forks M, which becomes
 * a child subreaper and calls setsid(): session S1, group GM. M forks X. X forks P, which makes a group GP of its own
 * and exits, unreaped: a zombie of X. X forks X2; X2 forks Q, which joins GP and forks a chain of N processes, each in
 * a group of its own and the parent of the next; X2 then calls setsid() (Q's parent is in another session: Q ties
 * nothing), and so does X. M forks W, in a group of its own. X's death makes the zombie P the subreaper M's child, and
 * M's death then orphans GP, with Q held stopped: X must wait for GP, as for a live child it left behind. Every process
 * of the job ignores SIGHUP and, on SIGCONT, appends its pid to DIR/cont and forks a helper (late.h). Files:
 * DIR/child.pid, p.pid, q.pid, x2.pid, x.pid, w.pid, DIR/ready. */
#include <stdlib.h>
#include <sys/wait.h>

#include "late.h"

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    use_dir(argv[1]);
    late_in_dir();
    signal(SIGCONT, say_then_fork);
    int n = atoi(argv[2]);
    put("child.pid", (long)getpid());
    if (fork() == 0) {
        if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) _exit(1);
        if (setsid() < 0) _exit(1);
        if (fork() == 0) {
            /* X */
            pid_t p = fork();
            if (p == 0) {
                setpgid(0, 0);
                put("p.pid", (long)getpid());
                _exit(0);
            }
            wait_for("p.pid");
            siginfo_t info;
            waitid(P_PID, p, &info, WEXITED | WNOWAIT);
            if (fork() == 0) {
                /* X2 */
                if (fork() == 0) {
                    /* Q */
                    if (setpgid(0, p) != 0) _exit(1);
                    idle_chain(n, 1);
                    put("q.pid", (long)getpid());
                    idle();
                }
                wait_for("q.pid");
                if (setsid() < 0) _exit(1);
                put("x2.pid", (long)getpid());
                idle();
            }
            wait_for("x2.pid");
            if (setsid() < 0) _exit(1);
            put("x.pid", (long)getpid());
            idle();
        }
        wait_for("x.pid");
        if (fork() == 0) {
            setpgid(0, 0);
            put("w.pid", (long)getpid());
            idle();
        }
        wait_for("w.pid");
        put("ready", 1);
        idle();
    }
    idle();
}
