/* chain DIR DEPTH: a job's main child (from review, rv290). It forks an intermediate that forks the
 * chain's head and exits, so that the head is reparented out of the tree (to init) but stays in the child's
 * process group; then it reaps the intermediate, writes its pid to DIR/child.pid and sleeps. The chain: head ->
 * ... -> DEPTH more processes, all in the child's group, each ignoring SIGHUP and, on SIGCONT, forking a helper
 * that calls setsid(), appends its pid to DIR/late.pid, then appends a timestamp (ns since the epoch) to
 * DIR/late every 10 ms for 30 s. The head writes its pid to DIR/head.pid; the chain's last writes DIR/ready. */
#include <stdlib.h>
#include <sys/wait.h>

#include "late.h"

static void chain(int depth) {
    if (depth > 0) {
        if (fork() == 0) chain(depth - 1);
    } else {
        put("ready", 1);
    }
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    use_dir(argv[1]);
    int depth = atoi(argv[2]);
    pid_t middle = fork();
    if (middle == 0) {
        pid_t head = fork();
        if (head == 0) {
            late_in_dir();
            put("head.pid", (long)getpid());
            chain(depth);
        }
        _exit(0);
    }
    waitpid(middle, 0, 0);
    put("child.pid", (long)getpid());
    for (;;) pause();
}
