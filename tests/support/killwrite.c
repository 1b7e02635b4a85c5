/* An LD_PRELOAD shim (from review, rv257): SIGKILL in a chosen window of the file backend's write (`dir.rs`
 * `install`: unlink the leftovers, write `.NAME.tmp`, link it as `.NAME.last.tmp`, rename `.NAME.tmp` over
 * `NAME.json`, then `.NAME.last.tmp` over `.NAME.last`), as SIGKILL, the OOM killer or a power loss can.
 * MPSYNC_TEST_KILL_ON=record: killed as it is about to rename `.NAME.tmp` over `NAME.json` (nothing in place).
 * MPSYNC_TEST_KILL_ON=last: killed as it is about to rename `.NAME.last.tmp` over `.NAME.last` (the record in
 * place, `.NAME.last` one write behind).
 * MPSYNC_TEST_KILL_ON=unlink: killed right after an unlinkat that removed a file named `*.tmp` (a crash
 * leftover) at the start of a write. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int ends(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}
static int kill_on(const char *what) {
  const char *on = getenv("MPSYNC_TEST_KILL_ON");
  return on && strcmp(on, what) == 0;
}
int renameat(int od, const char *o, int nd, const char *n) {
  if (kill_on("record") && ends(o, ".tmp") && !ends(o, ".last.tmp") && ends(n, ".json")) raise(SIGKILL);
  if (kill_on("last") && ends(o, ".last.tmp") && ends(n, ".last")) raise(SIGKILL);
  int (*real)(int, const char *, int, const char *) = dlsym(RTLD_NEXT, "renameat");
  return real(od, o, nd, n);
}
int unlinkat(int d, const char *p, int f) {
  int (*real)(int, const char *, int) = dlsym(RTLD_NEXT, "unlinkat");
  int r = real(d, p, f);
  if (r == 0 && kill_on("unlink") && ends(p, ".tmp") && !ends(p, ".last.tmp")) raise(SIGKILL);
  return r;
}
