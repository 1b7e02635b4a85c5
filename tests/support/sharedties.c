/* sharedties DIR N MODE (from review, rv306): job members in mpsync's own group S (mpsync in a session of its own), at
 * a process limit (the main child C forks idle processes in its group until fork(2) fails).
 * MODE "cycle": C forks A, which joins S (A ties S: its parent C is in group C). A forks N (in S, not tying it); N
 * forks M in a group H of its own; M forks T, which joins S (T ties S: its parent M is in H). A then forks N
 * processes W (in S, not tying it), each of which forks a Z that joins H (its parent W in S). Two members tie S (A and
 * T): the guard must kill T, then H whole, then the Ws and N, then A, to orphan no group while it has members of the
 * job left. MODE "plain": C forks A, which joins S (A alone ties S); A forks N members W in S.
 * Every process of the job ignores SIGHUP and on SIGCONT appends its pid to DIR/cont, then forks a helper (late.h).
 * Files: DIR/child.pid, a.pid, t.pid, m.pid, w.pid, DIR/ready. */
#include <stdlib.h>
#include <string.h>

#include "late.h"

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    use_dir(argv[1]);
    late_in_dir();
    signal(SIGCONT, say_then_fork);
    int n = atoi(argv[2]), cycle = strcmp(argv[3], "cycle") == 0;
    put("child.pid", (long)getpid());
    pid_t shared = getpgid(getppid());
    if (fork() == 0) {
        /* A: joins S; its parent C is in another group of the session. */
        if (setpgid(0, shared) != 0) _exit(1);
        put("a.pid", (long)getpid());
        pid_t h = 0;
        if (cycle) {
            int hp[2];
            if (pipe(hp) != 0) _exit(1);
            if (fork() == 0) {
                /* N: in S, its parent A in S. */
                pid_t m = fork();
                if (m == 0) {
                    /* M: a group H of its own. */
                    setpgid(0, 0);
                    put("m.pid", (long)getpid());
                    if (fork() == 0) {
                        /* T: joins S; its parent M is in H. */
                        if (setpgid(0, shared) != 0) _exit(1);
                        put("t.pid", (long)getpid());
                        idle();
                    }
                    idle();
                }
                idle();
            }
            wait_for("t.pid");
            FILE *f;
            char path[4096];
            snprintf(path, sizeof path, "%s/m.pid", dir);
            f = fopen(path, "r");
            if (!f || fscanf(f, "%d", &h) != 1) _exit(1);
            fclose(f);
        }
        for (int i = 0; i < n; i++) {
            if (fork() == 0) {
                /* W: in S, its parent A in S. */
                if (cycle && fork() == 0) {
                    /* Z: joins H; its parent W is in S. */
                    if (setpgid(0, h) != 0) _exit(1);
                    idle();
                }
                put("w.pid", (long)getpid());
                idle();
            }
        }
        idle();
    }
    while (lines("w.pid") < n) pause_ms(5);
    for (;;) {
        pid_t filler = fork();
        if (filler == 0) idle();
        if (filler < 0) break;
    }
    put("ready", 1);
    idle();
}
