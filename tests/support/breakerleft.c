/* breakerleft DIR MODE ZL L WIDE (from review, rv315 and rv316): the kill that breaks a stall of the guard's rounds,
 * where it leaves a child of the job behind in a session S of the job whose leader Z is a child subreaper: Z adopts
 * the child, which then ties its group to S, and Z's death (once the stall is broken) orphans that group with the
 * job's members held stopped in it.
 *
 * The main child forks Z, which calls setsid(): session S, group Z. Z forks Y; Y forks P, which makes a group G of its
 * own; P forks Q, which forks B and exits: B is init's, not the job's, and stays in group G (G is shared). B forks X,
 * which makes a group H of its own: X's parent B is in group G, so X (not the job's) ties H to S for as long as the
 * test runs. Y then calls setsid(): P's parent Y is in another session, and nothing ties G. Z becomes a child
 * subreaper (after B escaped), and forks PK, which makes a group K of its own; PK forks T, which joins H (T's parent
 * PK is in K); T forks U (in H); U forks D, which joins K (D's parent U is in H). The guard's rounds stall on K, T
 * and U (K waits for T, T for U, U for D in K), though X ties H whatever dies: killing K whole breaks the stall
 * safely. Z forks a chain of ZL processes, each in a group of its own and the parent of the next, the last one in K
 * (so the chain's kill waits for K's, and Z's for the chain's; a short one: the guard kills faster than the killed
 * die, and Z's death must come before the end of the L chain's kill). B then forks WIDE processes that idle, outside
 * the job too: listed, never killed, they make each of the guard's rounds longer. Z, Y and P come before K in pid
 * order, the chains and the WIDE after.
 *
 * MODE alone (rv315): Y's group is shared too (Y forks Q2, which forks B2, in Y's group, and exits), so Y is killed
 * alone, never whole; P forks C, in G, which forks a chain of L processes into K, as Z's (L > ZL). P, killed alone,
 * has no child in another group of its session: 5b3ee5b's stall breaker killed it, first in pid order, and its death
 * made C the subreaper Z's child: C tied G, and Z's death, after Z's chain, orphaned G with C held stopped until the
 * end of C's chain. A process killed alone to break a stall waits for all its children.
 *
 * MODE whole (rv316): Y alone in its group, killed whole; P itself forks the chain of L. Y's only child is P, in
 * another session: f23b743's stall breaker killed Y's group, first in pid order, and its death made P the subreaper
 * Z's child: P tied G, and Z's death orphaned G with P held stopped. A group killed whole to break a stall waits for a
 * child in another session too, unless the child made that session.
 *
 * Every process of the job (not B, B2, X nor the WIDE) ignores SIGHUP and, on SIGCONT, appends its pid to DIR/cont
 * and forks a helper (late.h). B, B2 and X end by themselves after two minutes, the WIDE with B. Files:
 * DIR/child.pid, z.pid, p.pid, y.pid, b.pid, b2.pid, x.pid, k.pid, d.pid, last.pid and zlast.pid (the chains' members
 * in K), DIR/ready. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "late.h"

static int wide;

/* Forks a process that forks B, in the caller's group, and exits (B is init's: no subreaper yet); B forks X, in a
 * group H of its own, and the WIDE, if WITH_X. Waits for the process's end. B writes DIR/NAME. */
static void escape(const char *name, int with_x) {
    pid_t q = fork();
    if (q == 0) {
        if (fork() == 0) {
            signal(SIGCONT, SIG_DFL);
            if (with_x && fork() == 0) {
                if (setpgid(0, 0) != 0) _exit(1);
                put("x.pid", (long)getpid());
                outside_idle();
            }
            if (!with_x) {
                put(name, (long)getpid());
                outside_idle();
            }
            wait_for("x.pid");
            put(name, (long)getpid());
            /* The WIDE, once K is made: after the job's processes that matter, in pid order. */
            wait_for("k.pid");
            for (int i = 0; i < wide; i++) {
                pid_t b = getpid();
                if (fork() == 0) {
                    prctl(PR_SET_PDEATHSIG, SIGKILL);
                    if (getppid() != b) _exit(0);
                    idle();
                }
            }
            put("wide.ready", 1);
            outside_idle();
        }
        wait_for(name);
        _exit(0);
    }
    waitpid(q, 0, 0);
}

/* Once K is made, a chain of DEPTH processes, each in a group of its own and the parent of the next, the last the
 * parent of one that joins K and writes DIR/LAST (jobfiles.h's idle_chain, but for its end in K). */
static void chain_into_k(int depth, const char *last) {
    wait_for("k.pid");
    pid_t k = pid_in("k.pid");
    if (fork() == 0) {
        for (int level = 0; level < depth; level++) {
            setpgid(0, 0);
            if (fork() != 0) idle();
        }
        if (setpgid(0, k) != 0) _exit(1);
        put(last, (long)getpid());
        idle();
    }
}

int main(int argc, char **argv) {
    if (argc != 6) return 2;
    use_dir(argv[1]);
    late_in_dir();
    signal(SIGCONT, say_then_fork);
    int alone = strcmp(argv[2], "alone") == 0;
    int zl = atoi(argv[3]), l = atoi(argv[4]);
    wide = atoi(argv[5]);
    put("child.pid", (long)getpid());
    if (fork() == 0) {
        /* Z */
        if (setsid() < 0) _exit(1);
        put("z.pid", (long)getpid());
        if (fork() == 0) {
            /* Y */
            if (fork() == 0) {
                /* P */
                setpgid(0, 0);
                escape("b.pid", 1);
                put("p.pid", (long)getpid());
                if (!alone) {
                    chain_into_k(l, "last.pid");
                } else if (fork() == 0) {
                    /* C, in G */
                    chain_into_k(l, "last.pid");
                    idle();
                }
                idle();
            }
            wait_for("p.pid");
            if (setsid() < 0) _exit(1);
            if (alone) escape("b2.pid", 0);
            put("y.pid", (long)getpid());
            idle();
        }
        wait_for("y.pid");
        if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) _exit(1);
        pid_t h = pid_in("x.pid");
        if (fork() == 0) {
            /* PK */
            setpgid(0, 0);
            pid_t k = getpid();
            fork_crossing(h, k);
            put("k.pid", (long)k);
            idle();
        }
        chain_into_k(zl, "zlast.pid");
        wait_for("d.pid");
        wait_for("last.pid");
        wait_for("zlast.pid");
        wait_for("wide.ready");
        put("ready", 1);
        idle();
    }
    idle();
}
