/* An LD_PRELOAD shim: the first time the process opens a ".../children" file (mpsync's supervisor lists
 * the children it inherited, before it has its signal handlers), it writes MPSYNC_TEST_PAUSE_DIR/paused and
 * waits until MPSYNC_TEST_PAUSE_DIR/go exists: a test holds mpsync in its earliest window, on purpose. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static int paused;
static void pause_once(const char *p){
  size_t n=strlen(p); const char *dir=getenv("MPSYNC_TEST_PAUSE_DIR");
  if(paused || !dir || n<9 || strcmp(p+n-9,"/children")!=0) return;
  paused=1;
  char path[4096]; snprintf(path,sizeof path,"%s/paused",dir);
  int(*o)(const char*,int,...)=dlsym(RTLD_NEXT,"open");
  int fd=o(path,O_WRONLY|O_CREAT|O_CLOEXEC,0644); if(fd>=0) close(fd);
  snprintf(path,sizeof path,"%s/go",dir);
  struct timespec ten_ms={0,10000000};
  while(access(path,F_OK)!=0) nanosleep(&ten_ms,NULL);
}
int open64(const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  pause_once(p); int(*o)(const char*,int,...)=dlsym(RTLD_NEXT,"open64"); return o(p,f,m);}
int open(const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  pause_once(p); int(*o)(const char*,int,...)=dlsym(RTLD_NEXT,"open"); return o(p,f,m);}
int openat(int d,const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  pause_once(p); int(*o)(int,const char*,int,...)=dlsym(RTLD_NEXT,"openat"); return o(d,p,f,m);}
int openat64(int d,const char *p, int f, ...){ va_list a; va_start(a,f); int m=va_arg(a,int); va_end(a);
  pause_once(p); int(*o)(int,const char*,int,...)=dlsym(RTLD_NEXT,"openat64"); return o(d,p,f,m);}
