/* adoptedtie DIR DEPTH WIDE [zombie] (from review, rv309): a process group of the job in a session the job made,
 * shared with a process that is not the job's, and tied to that session by one member X whose parent P is in another
 * group of the session, a group nothing ties: the guard must kill X only after the rest of X's group.
 * The main child C forks E, which calls setsid(): session S, group E (E's parent C is in another session: E ties
 * nothing). E forks Q, which forks B (in group E) and exits: B is init's, not the job's as the guard sees it (a
 * process that escaped, as the README admits), and makes group E one the guard kills member by member. Then C
 * becomes a child subreaper. E forks H, which makes a group of its own and forks P; P forks X, which joins group E
 * (X's parent P is in group H of S: X ties group E to S); H exits, and P is C's, in another session: nothing ties
 * group H. With "zombie", X exits once in group E, and P leaves it unreaped: nothing ties group E, but P's death
 * would orphan it all the same (the kernel looks at the groups of a dead process's children, zombies too). E forks
 * WIDE processes that idle, and a chain of DEPTH processes, all in group E, each link the parent of the next: the
 * guard kills the chain children first, a link a round, E after it (the idle ones, listed, make each round longer).
 * Were X (or P) killed in the first rounds, its death would orphan group E while E and the chain are held stopped,
 * and the kernel would continue them. Every process of the job (not B) ignores SIGHUP and, on SIGCONT, appends its
 * pid to DIR/cont and forks a helper (late.h). B ends by itself after two minutes. Files: DIR/child.pid, e.pid,
 * x.pid, p.pid, b.pid, DIR/ready. */
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "late.h"

static void say_then_fork(int signal) {
    put("cont", (long)getpid());
    on_cont(signal);
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) return 2;
    int zombie = argc == 5 && strcmp(argv[4], "zombie") == 0;
    use_dir(argv[1]);
    late_in_dir();
    signal(SIGCONT, say_then_fork);
    int depth = atoi(argv[2]), wide = atoi(argv[3]);
    put("child.pid", (long)getpid());
    if (fork() == 0) {
        /* E */
        if (setsid() < 0) _exit(1);
        pid_t e = getpid();
        put("e.pid", (long)e);
        pid_t q = fork();
        if (q == 0) {
            if (fork() == 0) {
                /* B: not the job's once Q is gone; default SIGCONT, SIGHUP ignored. */
                signal(SIGCONT, SIG_DFL);
                put("b.pid", (long)getpid());
                for (int i = 0; i < 6000; i++) pause_ms(20);
                _exit(0);
            }
            wait_for("b.pid");
            _exit(0);
        }
        waitpid(q, 0, 0);
        put("b.escaped", 1);
        wait_for("subreaper");
        pid_t h = fork();
        if (h == 0) {
            setpgid(0, 0);
            if (fork() == 0) {
                /* P */
                if (fork() == 0) {
                    /* X: joins group E; its parent P is in group H of the session. */
                    if (setpgid(0, e) != 0) _exit(1);
                    put("x.pid", (long)getpid());
                    if (zombie) _exit(0);
                    idle();
                }
                wait_for("x.pid");
                if (zombie) {
                    siginfo_t info;
                    waitid(P_ALL, 0, &info, WEXITED | WNOWAIT);
                }
                put("p.pid", (long)getpid());
                idle();
            }
            wait_for("p.pid");
            _exit(0);
        }
        waitpid(h, 0, 0);
        idle_children(wide);
        idle_chain(depth);
        put("ready", 1);
        idle();
    }
    wait_for("b.escaped");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return 1;
    put("subreaper", 1);
    idle();
}
