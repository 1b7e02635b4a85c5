/* stalledties DIR N [YS [job|leaderless]] (from review, rv313): in a session the job made, the guard's rounds stall on
 * groups H and K that a process outside the job keeps tied to the session (so any order of kills is safe for them); the
 * guard must break the stall and go on in order, not kill a group W before the group E it is the only tie of, which is
 * in no cycle at all (as it did when every group of the job's alone was killed whole at once after a stall).
 *
 * The main child C forks E, which calls setsid(): session S, group E (E's parent C is in another session). E forks Q,
 * which forks B and exits: B is init's, not the job's, and stays in group E (E is shared). B forks X, which makes a
 * group H of its own: X's parent B is in group E, so X (not the job's) ties H to S for as long as the test runs. C then
 * becomes a child subreaper. E forks P, which makes a group K of its own (P's parent E is in group E: P ties K). P
 * forks T, which joins H (T's parent P is in K: T ties H too). T forks U (in H). U forks D, which joins K (D's parent U
 * is in H). So K and H each have a member whose parent is in the other; but X ties H whatever dies: K whole, then U,
 * then T, orphans nothing. The guard's order (K once no process of another group has its parent in it; T once its child
 * U is gone; U once its child D is gone) finds none. E forks G, which forks Wp and exits: Wp is C's (a subreaper in
 * another session), makes a group W of its own (its parent C is in another session: nothing ties W), and forks Q1,
 * which joins group E (Q1's parent Wp is in W: Q1 is the only tie of group E). E forks N processes R in group E, each
 * of which forks a Z that joins K. The safe order: K whole, U, T, the Rs, E, Q1, then W. Were W killed before Q1, Wp's
 * death would orphan group E with E, the Rs and Q1 held stopped, and the kernel would continue them. Every process of
 * the job (not B, nor X) ignores SIGHUP and, on SIGCONT, appends its pid to DIR/cont and forks a helper (late.h). With
 * YS (argv[3]), E also forks YS processes Y before the Rs, each in a group of its own (after W in pid order) and the
 * parent of a member of K: the fallback kills their groups after W's, before the Rs, which only widens the window. With
 * "job" (argv[4], from review, rv317), X is E's child, of the job: H stays tied by the job's own X, whose parent E
 * waits for it, when K is killed whole; the kernel has no cycle either, and the guard's breaker must find that kill,
 * not fall back to killing every group of the job's alone at once (W's before group E's members). With "leaderless"
 * (from review, rv318), as "job", but H and K are made by processes that exit once X and P are in them: groups without
 * a leader. B and X end by themselves after two minutes. Files: DIR/child.pid, e.pid, b.pid, x.pid, p.pid, t.pid,
 * u.pid, d.pid, w.pid, q1.pid, r.pid, DIR/ready. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "late.h"

/* A group of a process of its own, which exits once the file `until` exists (its parent reaps it): the group lives
 * on without its leader. Its id. */
static pid_t passing_leader(const char *until) {
    pid_t l = fork();
    if (l == 0) {
        setpgid(0, 0);
        wait_for(until);
        _exit(0);
    }
    setpgid(l, l);
    return l;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 5) return 2;
    int ys = argc >= 4 ? atoi(argv[3]) : 0;
    int leaderless = argc == 5 && strcmp(argv[4], "leaderless") == 0;
    int x_of_the_job = leaderless || (argc == 5 && strcmp(argv[4], "job") == 0);
    use_dir(argv[1]);
    late_in_dir();
    signal(SIGCONT, say_then_fork);
    int n = atoi(argv[2]);
    put("child.pid", (long)getpid());
    if (fork() == 0) {
        /* E */
        if (setsid() < 0) _exit(1);
        pid_t e = getpid();
        put("e.pid", (long)e);
        pid_t q = fork();
        if (q == 0) {
            if (fork() == 0) {
                /* B: not the job's once Q is gone; stays in group E. */
                signal(SIGCONT, SIG_DFL);
                if (!x_of_the_job && fork() == 0) {
                    /* X: a group H of its own; its parent B is in group E: X ties H. */
                    if (setpgid(0, 0) != 0) _exit(1);
                    put("x.pid", (long)getpid());
                    outside_idle();
                }
                if (!x_of_the_job) wait_for("x.pid");
                put("b.pid", (long)getpid());
                outside_idle();
            }
            wait_for("b.pid");
            _exit(0);
        }
        waitpid(q, 0, 0);
        put("b.escaped", 1);
        wait_for("subreaper");
        /* With "leaderless", H and K are made by processes that leave them (exit) once X and P are in them. */
        pid_t lh = leaderless ? passing_leader("x.pid") : 0;
        if (x_of_the_job && fork() == 0) {
            /* X, of the job: a group H of its own; its parent E is in group E: X ties H, and E waits for X. */
            if (setpgid(0, lh) != 0) _exit(1);
            put("x.pid", (long)getpid());
            idle();
        }
        wait_for("x.pid");
        pid_t h = leaderless ? lh : pid_in("x.pid");
        pid_t lk = leaderless ? passing_leader("p.pid") : 0;
        if (fork() == 0) {
            /* P: a group K of its own. */
            setpgid(0, lk);
            pid_t k = getpgrp();
            put("p.pid", (long)getpid());
            fork_crossing(h, k);
            idle();
        }
        wait_for("d.pid");
        pid_t k = leaderless ? lk : pid_in("p.pid");
        if (leaderless) {
            waitpid(lh, 0, 0);
            waitpid(lk, 0, 0);
        }
        pid_t g = fork();
        if (g == 0) {
            if (fork() == 0) {
                /* Wp: a group W of its own. */
                setpgid(0, 0);
                if (fork() == 0) {
                    /* Q1: joins group E; its parent Wp is in W. */
                    if (setpgid(0, e) != 0) _exit(1);
                    put("q1.pid", (long)getpid());
                    idle();
                }
                wait_for("q1.pid");
                put("w.pid", (long)getpid());
                idle();
            }
            wait_for("w.pid");
            _exit(0);
        }
        waitpid(g, 0, 0);
        for (int i = 0; i < ys; i++) {
            if (fork() == 0) {
                /* Y: a group of its own (after W in pid order); forks a member of K. */
                setpgid(0, 0);
                pid_t z = fork();
                if (z == 0) {
                    setpgid(0, k);
                    idle();
                }
                if (setpgid(z, k) != 0 && getpgid(z) != k) _exit(1);
                put("y.pid", (long)getpid());
                idle();
            }
        }
        while (lines("y.pid") < ys) pause_ms(5);
        for (int i = 0; i < n; i++) {
            if (fork() == 0) {
                /* R: in group E; forks a Z that joins K. */
                pid_t z = fork();
                if (z == 0) {
                    setpgid(0, k);
                    idle();
                }
                if (setpgid(z, k) != 0 && getpgid(z) != k) _exit(1);
                put("r.pid", (long)getpid());
                idle();
            }
        }
        while (lines("r.pid") < n) pause_ms(5);
        put("ready", 1);
        idle();
    }
    subreaper_once("b.escaped");
}
