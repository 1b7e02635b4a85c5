/* An LD_PRELOAD shim that refuses what a strict seccomp profile or a bare image can refuse:
 * - REFUSE_PDEATHSIG=1: prctl(PR_SET_PDEATHSIG) fails with EPERM;
 * - REFUSE_RANDOM=1: getrandom(2) fails with EPERM and /dev/urandom and /dev/random cannot be opened, so that
 *   no randomness is to be had. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <linux/prctl.h>
#include <sys/types.h>
static int on(const char *name){ const char *v=getenv(name); return v && strcmp(v,"1")==0; }
static int bad(const char *p){ return on("REFUSE_RANDOM") && p && (strcmp(p,"/dev/urandom")==0 || strcmp(p,"/dev/random")==0); }
int prctl(int option, ...){
  va_list a; va_start(a,option); unsigned long a2=va_arg(a,unsigned long), a3=va_arg(a,unsigned long),
    a4=va_arg(a,unsigned long), a5=va_arg(a,unsigned long); va_end(a);
  if(option==PR_SET_PDEATHSIG && on("REFUSE_PDEATHSIG")){ errno=EPERM; return -1; }
  int(*real)(int,unsigned long,unsigned long,unsigned long,unsigned long)=dlsym(RTLD_NEXT,"prctl");
  return real(option,a2,a3,a4,a5);
}
ssize_t getrandom(void *buf, size_t len, unsigned int flags){
  if(on("REFUSE_RANDOM")){ errno=EPERM; return -1; }
  ssize_t(*real)(void*,size_t,unsigned int)=dlsym(RTLD_NEXT,"getrandom"); return real(buf,len,flags);
}
int getentropy(void *buf, size_t len){
  if(on("REFUSE_RANDOM")){ errno=EPERM; return -1; }
  int(*real)(void*,size_t)=dlsym(RTLD_NEXT,"getentropy"); return real(buf,len);
}
int open64(const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  if(bad(p)){errno=EACCES;return -1;} int(*o)(const char*,int,...)=dlsym(RTLD_NEXT,"open64"); return o(p,f,m);}
int open(const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  if(bad(p)){errno=EACCES;return -1;} int(*o)(const char*,int,...)=dlsym(RTLD_NEXT,"open"); return o(p,f,m);}
int openat(int d,const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  if(bad(p)){errno=EACCES;return -1;} int(*o)(int,const char*,int,...)=dlsym(RTLD_NEXT,"openat"); return o(d,p,f,m);}
int openat64(int d,const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  if(bad(p)){errno=EACCES;return -1;} int(*o)(int,const char*,int,...)=dlsym(RTLD_NEXT,"openat64"); return o(d,p,f,m);}
