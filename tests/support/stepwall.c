// LD_PRELOAD shim: CLOCK_REALTIME runs MPSYNC_TEST_AHEAD_S seconds ahead until MPSYNC_TEST_STEP_AFTER_MS
// after the process started, then is stepped back to the true time (chrony's makestep, an NTP correction
// after a VM resumed, a machine booted with a bad RTC). The monotonic clock runs on untouched. Its own
// variables (and LD_PRELOAD) are taken out of the environment, so children run on the true clock.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
static int (*real)(clockid_t, struct timespec *);
static long long ahead_s, step_after_ns, start_ns;
static long long mono_ns(void) {
    struct timespec ts; real(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
__attribute__((constructor)) static void init(void) {
    real = dlsym(RTLD_NEXT, "clock_gettime");
    const char *a = getenv("MPSYNC_TEST_AHEAD_S"), *s = getenv("MPSYNC_TEST_STEP_AFTER_MS");
    ahead_s = a ? atoll(a) : 0;
    step_after_ns = (s ? atoll(s) : 0) * 1000000LL;
    start_ns = mono_ns();
    unsetenv("LD_PRELOAD");
    unsetenv("MPSYNC_TEST_AHEAD_S");
    unsetenv("MPSYNC_TEST_STEP_AFTER_MS");
}
int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE) && mono_ns() - start_ns < step_after_ns)
        ts->tv_sec += ahead_s;
    return r;
}
