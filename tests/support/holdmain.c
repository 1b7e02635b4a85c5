/* An LD_PRELOAD shim (from review, helper-200): while MPSYNC_TEST_HOLD_DIR/holdmain exists, the first SIGSTOP
 * mpsync's main thread sends to a process group (`stop_job`: the child's job did not stop on the stop signal
 * within STOP_WAIT) writes MPSYNC_TEST_HOLD_DIR/mainheld and waits until MPSYNC_TEST_HOLD_DIR/mainrelease
 * exists before it is sent. A test holds mpsync inside `suspend`, before `continued_meanwhile`, for as long
 * as it needs to send signals (a busy machine, or a job slow to stop, gives the same window). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
static int done;
static int exists(const char *dir, const char *name){
  char path[4096]; snprintf(path,sizeof path,"%s/%s",dir,name); return access(path,F_OK)==0;
}
int killpg(pid_t pgrp, int sig){
  int(*o)(pid_t,int)=dlsym(RTLD_NEXT,"killpg");
  const char *dir=getenv("MPSYNC_TEST_HOLD_DIR");
  if(!done && sig==SIGSTOP && dir && syscall(SYS_gettid)==getpid() && exists(dir,"holdmain")){
    done=1;
    char path[4096]; snprintf(path,sizeof path,"%s/mainheld",dir);
    int f=open(path,O_WRONLY|O_CREAT|O_CLOEXEC,0644); if(f>=0) close(f);
    struct timespec ten_ms={0,10000000};
    while(!exists(dir,"mainrelease")) nanosleep(&ten_ms,NULL);
  }
  return o(pgrp,sig);
}
