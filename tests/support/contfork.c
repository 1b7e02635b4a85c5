/* A worker of a job that ignores SIGHUP (as one under `nohup` does, or a daemon that takes HUP for a reload)
 * and starts a helper whenever it is continued (SIGCONT: a program that resumes work after a stop). Usage:
 * contfork FILE. It appends a timestamp (ns since the epoch) to FILE every 10 ms; each helper writes its pid
 * to FILE.late.pid and then appends a timestamp to FILE.late every millisecond for 20 s. (From review, rv286.) */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char late[4096], late_pid[4096];

static void stamp(int fd) {
    char buf[64];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int n = snprintf(buf, sizeof buf, "%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    (void)!write(fd, buf, n);
}

static void helper(void) {
    int p = open(late_pid, O_WRONLY | O_CREAT | O_APPEND, 0644);
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    (void)!write(p, buf, n);
    close(p);
    int fd = open(late, O_WRONLY | O_CREAT | O_APPEND, 0644);
    for (int i = 0; i < 20000; i++) {
        stamp(fd);
        struct timespec s = {0, 1000000};
        nanosleep(&s, 0);
    }
    _exit(0);
}

static void on_cont(int signal) {
    (void)signal;
    if (fork() == 0) helper();
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    snprintf(late, sizeof late, "%s.late", argv[1]);
    snprintf(late_pid, sizeof late_pid, "%s.late.pid", argv[1]);
    signal(SIGHUP, SIG_IGN);
    signal(SIGCONT, on_cont);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    for (;;) {
        stamp(fd);
        struct timespec s = {0, 10000000};
        nanosleep(&s, 0);
    }
}
