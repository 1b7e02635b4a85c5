/* chain DIR DEPTH: a job's main child (from review, rv290). It forks an intermediate that forks the
 * chain's head and exits, so that the head is reparented out of the tree (to init) but stays in the child's
 * process group; then it reaps the intermediate, writes its pid to DIR/child.pid and sleeps. The chain: head ->
 * ... -> DEPTH more processes, all in the child's group, each ignoring SIGHUP and, on SIGCONT, forking a helper
 * that calls setsid(), appends its pid to DIR/late.pid, then appends a timestamp (ns since the epoch) to
 * DIR/late every 10 ms for 30 s. The head writes its pid to DIR/head.pid; the chain's last writes DIR/ready. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[2048];

static void put(const char *name, long value) {
    char path[4096], buf[64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int n = snprintf(buf, sizeof buf, "%ld\n", value);
    (void)!write(fd, buf, n);
    close(fd);
}

static void helper(void) {
    setsid();
    put("late.pid", (long)getpid());
    for (int i = 0; i < 3000; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        put("late", (long)ts.tv_sec * 1000000000L + ts.tv_nsec);
        struct timespec s = {0, 10000000};
        nanosleep(&s, 0);
    }
    _exit(0);
}

static void on_cont(int signal) {
    (void)signal;
    if (fork() == 0) helper();
}

static void chain(int depth) {
    signal(SIGHUP, SIG_IGN);
    signal(SIGCONT, on_cont);
    if (depth > 0) {
        if (fork() == 0) chain(depth - 1);
    } else {
        put("ready", 1);
    }
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    snprintf(dir, sizeof dir, "%s", argv[1]);
    int depth = atoi(argv[2]);
    pid_t middle = fork();
    if (middle == 0) {
        pid_t head = fork();
        if (head == 0) {
            put("head.pid", (long)getpid());
            chain(depth);
        }
        _exit(0);
    }
    waitpid(middle, 0, 0);
    put("child.pid", (long)getpid());
    for (;;) pause();
}
