/* A worker of a job that ignores SIGHUP (as one under `nohup` does, or a daemon that takes HUP for a reload)
 * and starts a helper whenever it is continued (SIGCONT: a program that resumes work after a stop). Usage:
 * contfork FILE. It appends a timestamp (ns since the epoch) to FILE every 10 ms; each helper writes its pid
 * to FILE.late.pid and then appends a timestamp to FILE.late every millisecond for 20 s. (From review, rv286.) */
#include "late.h"

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    snprintf(late_path, sizeof late_path, "%s.late", argv[1]);
    snprintf(late_pid_path, sizeof late_pid_path, "%s.late.pid", argv[1]);
    late_count = 20000, late_period_ms = 1, late_new_session = 0;
    signal(SIGHUP, SIG_IGN);
    signal(SIGCONT, on_cont);
    for (;;) {
        append(argv[1], now_ns());
        pause_ms(10);
    }
}
