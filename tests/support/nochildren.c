/* An LD_PRELOAD shim: opening any ".../children" file fails with ENOENT, as on a kernel without
 * CONFIG_PROC_CHILDREN, where the supervisor cannot tell whose thread's child a process is. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
static int bad(const char *p){ size_t n=strlen(p); return n>9 && strcmp(p+n-9,"/children")==0; }
int open64(const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  if(bad(p)){errno=ENOENT;return -1;} int(*o)(const char*,int,...)=dlsym(RTLD_NEXT,"open64"); return o(p,f,m);}
int open(const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  if(bad(p)){errno=ENOENT;return -1;} int(*o)(const char*,int,...)=dlsym(RTLD_NEXT,"open"); return o(p,f,m);}
int openat(int d,const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  if(bad(p)){errno=ENOENT;return -1;} int(*o)(int,const char*,int,...)=dlsym(RTLD_NEXT,"openat"); return o(d,p,f,m);}
int openat64(int d,const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  if(bad(p)){errno=ENOENT;return -1;} int(*o)(int,const char*,int,...)=dlsym(RTLD_NEXT,"openat64"); return o(d,p,f,m);}
