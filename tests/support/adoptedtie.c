/* adoptedtie DIR DEPTH WIDE [zombie|stranger] (from review, rv309, rv311): a process group of the job in a session
 * the job made, shared with processes that are not the job's, and tied to that session by one member X of the job
 * whose parent P is in another group of the session, a group nothing ties: the guard must kill X only after the rest
 * of X's group.
 * The main child C forks E, which calls setsid(): session S, group E (E's parent C is in another session: E ties
 * nothing). E forks Q, which forks B and exits: B is init's, not the job's as the guard sees it (a process that
 * escaped, as the README admits). B stays in group E, which the guard then kills member by member; with
 * "stranger", B makes a group of its own and forks Y, which joins group E (Y's parent B is in another group of S: Y,
 * not the job's, ties group E too) and exits when the pipe that only X writes to is closed: when X dies. Then C
 * becomes a child subreaper. E forks H, which makes a group of its own and forks P; P forks X, which joins group E
 * (X's parent P is in group H of S: X ties group E to S); H exits, and P is C's, in another session: nothing ties
 * group H. With "zombie", X exits once in group E, and P leaves it unreaped: nothing ties group E, but P's death
 * would orphan it all the same (the kernel looks at the groups of a dead process's children, zombies too). E forks
 * WIDE processes that idle, in group E, and a chain of DEPTH processes, each in a group of its own and the parent of
 * the next: the guard kills the chain a group a round, the last first, and E after it (the idle ones, listed, make
 * each round longer). Were X (or P, or Y) to die in the first rounds, its death would orphan group E while E is held
 * stopped, and the kernel would continue it. Every process of the job (not B, nor Y) ignores SIGHUP and, on SIGCONT,
 * appends its pid to DIR/cont and forks a helper (late.h). B ends by itself after two minutes. Files:
 * DIR/child.pid, e.pid, x.pid, p.pid, b.pid, y.pid, DIR/ready. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "late.h"

static void wait_for_eof(int fd) {
    char byte;
    for (;;) {
        ssize_t got = read(fd, &byte, 1);
        if (got == 0 || (got < 0 && errno != EINTR)) return;
    }
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) return 2;
    int zombie = argc == 5 && strcmp(argv[4], "zombie") == 0;
    int stranger = argc == 5 && strcmp(argv[4], "stranger") == 0;
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
        int fds[2];
        if (pipe(fds) != 0) _exit(1);
        pid_t q = fork();
        if (q == 0) {
            close(fds[1]);
            if (fork() == 0) {
                /* B: not the job's once Q is gone; default SIGCONT, SIGHUP ignored. */
                signal(SIGCONT, SIG_DFL);
                if (stranger) {
                    if (setpgid(0, 0) != 0) _exit(1);
                    if (fork() == 0) {
                        /* Y: joins group E; its parent B is in another group of S. */
                        if (setpgid(0, e) != 0) _exit(1);
                        put("y.pid", (long)getpid());
                        wait_for_eof(fds[0]);
                        _exit(0);
                    }
                    wait_for("y.pid");
                }
                close(fds[0]);
                put("b.pid", (long)getpid());
                for (int i = 0; i < 6000; i++) pause_ms(20);
                _exit(0);
            }
            wait_for("b.pid");
            _exit(0);
        }
        close(fds[0]);
        waitpid(q, 0, 0);
        put("b.escaped", 1);
        wait_for("subreaper");
        pid_t h = fork();
        if (h == 0) {
            setpgid(0, 0);
            if (fork() == 0) {
                /* P */
                if (fork() == 0) {
                    /* X: joins group E; its parent P is in group H of the session. It alone writes to the pipe. */
                    if (setpgid(0, e) != 0) _exit(1);
                    put("x.pid", (long)getpid());
                    if (zombie) _exit(0);
                    idle();
                }
                close(fds[1]);
                wait_for("x.pid");
                if (zombie) {
                    siginfo_t info;
                    waitid(P_ALL, 0, &info, WEXITED | WNOWAIT);
                }
                put("p.pid", (long)getpid());
                idle();
            }
            close(fds[1]);
            wait_for("p.pid");
            _exit(0);
        }
        close(fds[1]);
        waitpid(h, 0, 0);
        idle_children(wide);
        idle_chain(depth, 1);
        put("ready", 1);
        idle();
    }
    subreaper_once("b.escaped");
}
