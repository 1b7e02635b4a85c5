/* An LD_PRELOAD shim (from review, helper-197): while MPSYNC_TEST_HOLD_DIR/hold exists, mpsync's signal thread
 * ("mpsync-signals"), once woken by a signal in its blocking recv of signal-hook's self-pipe, writes
 * MPSYNC_TEST_HOLD_DIR/held and waits until MPSYNC_TEST_HOLD_DIR/release exists before it goes on to hand the
 * signal to the channel. A test widens on purpose the window between a signal's delivery and its arrival on
 * the channel (a thread's scheduling latency on a busy machine). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static int exists(const char *dir, const char *name){
  char path[4096]; snprintf(path,sizeof path,"%s/%s",dir,name); return access(path,F_OK)==0;
}
ssize_t recv(int fd, void *buf, size_t len, int flags){
  ssize_t(*o)(int,void*,size_t,int)=dlsym(RTLD_NEXT,"recv");
  ssize_t r=o(fd,buf,len,flags);
  char name[32]={0}; prctl(PR_GET_NAME,name,0,0,0);
  const char *dir=getenv("MPSYNC_TEST_HOLD_DIR");
  if(r>0 && flags==0 && len==1 && dir && strcmp(name,"mpsync-signals")==0 && exists(dir,"hold")){
    char path[4096]; snprintf(path,sizeof path,"%s/held",dir);
    int f=open(path,O_WRONLY|O_CREAT|O_CLOEXEC,0644); if(f>=0) close(f);
    struct timespec ten_ms={0,10000000};
    while(!exists(dir,"release")) nanosleep(&ten_ms,NULL);
  }
  return r;
}
