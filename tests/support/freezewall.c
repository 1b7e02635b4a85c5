// LD_PRELOAD shim: CLOCK_REALTIME stops at its first reading (the wall clock stands still);
// every other clock (CLOCK_MONOTONIC: what mpsync decides by) runs as usual. Removes itself from
// the environment so that children (the stamping `date`) see the real wall clock.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static struct timespec frozen;
static int have;
// MPSYNC_TEST_WALL_NS (nanoseconds since the epoch), if set: stops there instead, the same time for every
// process given it (two processes under one libfaketime FAKETIME).
__attribute__((constructor)) static void init(void) {
    const char *at = getenv("MPSYNC_TEST_WALL_NS");
    if (at) {
        unsigned long long ns = strtoull(at, 0, 10);
        frozen.tv_sec = ns / 1000000000ULL;
        frozen.tv_nsec = ns % 1000000000ULL;
        have = 1;
    }
    unsetenv("LD_PRELOAD");
    unsetenv("MPSYNC_TEST_WALL_NS");
}
int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    int r = real_clock_gettime(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        if (!__atomic_load_n(&have, __ATOMIC_ACQUIRE)) { frozen = *ts; __atomic_store_n(&have, 1, __ATOMIC_RELEASE); }
        *ts = frozen;
    }
    return r;
}
