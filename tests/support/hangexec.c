/* An LD_PRELOAD shim (from review, helper-69): exec of a program whose path names "hangexec" hangs in the
 * forked child, as an execve on a dead mount does; the parent waits for the exec in Command::spawn. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <unistd.h>
static void maybe(const char *p){ if (p && strstr(p, "hangexec")) for(;;) pause(); }
int execvp(const char *f, char *const a[]){ maybe(f); int(*r)(const char*,char*const[])=dlsym(RTLD_NEXT,"execvp"); return r(f,a);}
int execve(const char *f, char *const a[], char *const e[]){ maybe(f); int(*r)(const char*,char*const[],char*const[])=dlsym(RTLD_NEXT,"execve"); return r(f,a,e);}
int execv(const char *f, char *const a[]){ maybe(f); int(*r)(const char*,char*const[])=dlsym(RTLD_NEXT,"execv"); return r(f,a);}
