/* stuckgroup DIR MNT WHO (from review, rv299): mpsync runs in a session of its own; a job member X joins mpsync's
 * group S, with its parent Y in the child's group, so X alone ties S to the session (as sharedgroup.c). One
 * process of the job looks up MNT/hang (a FUSE mount whose daemon never answers: uninterruptible sleep that
 * SIGKILL does not end): X and its parent Y if WHO is "x" (so that X's parent stays in the child's group until X
 * dies), or H, another child of the main child in its group, if "h".
 * Files: DIR/child.pid, DIR/x.pid, DIR/ready (once the lookup was sent, DIR/hung.pid written by the daemon). */
#include <signal.h>
#include <string.h>

#include "jobfiles.h"

static char mnt[2048];
static int x_hangs;

static void hang(void) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/hang-%d", mnt, (int)getpid());
    stat(path, &st);
    for (;;) pause();
}

/* X and Y (see fork_tie) hang if WHO is "x"; else they idle. */
static void hang_if_x(void) {
    if (x_hangs) hang();
    idle();
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    use_dir(argv[1]);
    snprintf(mnt, sizeof mnt, "%s", argv[2]);
    x_hangs = strcmp(argv[3], "x") == 0;
    put("child.pid", (long)getpid());
    pid_t shared = getpgid(getppid());
    fork_tie(shared, hang_if_x);
    wait_for("x.pid");
    if (!x_hangs && fork() == 0) hang();
    for (;;) {
        char path[4096], buf[256];
        snprintf(path, sizeof path, "%s/hung.pid", dir);
        int fd = open(path, O_RDONLY), lines = 0;
        ssize_t n = fd < 0 ? 0 : read(fd, buf, sizeof buf);
        if (fd >= 0) close(fd);
        for (ssize_t i = 0; i < n; i++) lines += buf[i] == '\n';
        if (lines >= (x_hangs ? 2 : 1)) break;
        pause_ms(2);
    }
    put("ready", 1);
    for (;;) pause();
}
