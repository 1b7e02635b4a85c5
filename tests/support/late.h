/* What a job's process in the guard tests does when it is continued (SIGCONT): it forks a helper that records
 * its pid, then appends a timestamp (ns since the epoch) to a file, again and again, for a while. A stamp
 * written after the guard's kill began is a process of the job that ran on. Shared by chain.c, groupchain.c
 * and contfork.c. Set the four `late_*` settings, then install `on_cont` for SIGCONT. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static char late_pid_path[4096], late_path[4096];
static int late_count, late_period_ms, late_new_session;

/* Appends VALUE and a newline to PATH. */
static void append(const char *path, long long value) {
    char buf[64];
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int n = snprintf(buf, sizeof buf, "%lld\n", value);
    (void)!write(fd, buf, n);
    close(fd);
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void pause_ms(int ms) {
    struct timespec s = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&s, 0);
}

static void late_helper(void) {
    if (late_new_session) setsid();
    append(late_pid_path, (long long)getpid());
    for (int i = 0; i < late_count; i++) {
        append(late_path, now_ns());
        pause_ms(late_period_ms);
    }
    _exit(0);
}

static void on_cont(int signal) {
    (void)signal;
    if (fork() == 0) late_helper();
}
