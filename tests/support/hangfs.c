/* hangfs MNT DIR (from review, rv299): a FUSE file system at MNT whose daemon answers INIT and GETATTR of the root,
 * then reads every LOOKUP and never answers it: a process that looks up a name in MNT sleeps uninterruptibly
 * (SIGKILL does not end it) until this daemon dies (the connection is aborted). It appends the pid of each
 * process whose LOOKUP it holds to DIR/hung.pid. Needs root (mount(2) of fuse). On SIGTERM it detaches the mount
 * and exits. Writes DIR/fuse.ready once mounted. */
#include <fcntl.h>
#include <linux/fuse.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "jobfiles.h"

static char mnt[2048];

static void on_term(int s) {
    (void)s;
    umount2(mnt, MNT_DETACH);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    snprintf(mnt, sizeof mnt, "%s", argv[1]);
    use_dir(argv[2]);
    signal(SIGTERM, on_term);
    signal(SIGHUP, SIG_IGN);
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) { perror("open /dev/fuse"); return 1; }
    char opts[256];
    snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fd);
    if (mount("rv299fuse", mnt, "fuse", MS_NOSUID | MS_NODEV, opts) != 0) { perror("mount"); return 1; }
    put("fuse.ready", 1);
    static char buf[1 << 20 | 1 << 16];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < (ssize_t)sizeof(struct fuse_in_header)) continue;
        struct fuse_in_header *in = (struct fuse_in_header *)buf;
        char out[4096];
        struct fuse_out_header *oh = (struct fuse_out_header *)out;
        memset(out, 0, sizeof out);
        oh->unique = in->unique;
        if (in->opcode == FUSE_INIT) {
            struct fuse_init_in *ii = (struct fuse_init_in *)(in + 1);
            struct fuse_init_out *io = (struct fuse_init_out *)(oh + 1);
            io->major = FUSE_KERNEL_VERSION;
            io->minor = ii->minor < FUSE_KERNEL_MINOR_VERSION ? ii->minor : FUSE_KERNEL_MINOR_VERSION;
            io->max_write = 65536;
            io->max_readahead = ii->max_readahead;
            io->flags = ii->flags & FUSE_PARALLEL_DIROPS;
            oh->len = sizeof *oh + sizeof *io;
            (void)!write(fd, out, oh->len);
        } else if (in->opcode == FUSE_GETATTR && in->nodeid == FUSE_ROOT_ID) {
            struct fuse_attr_out *ao = (struct fuse_attr_out *)(oh + 1);
            ao->attr.ino = 1;
            ao->attr.mode = 040755;
            ao->attr.nlink = 2;
            oh->len = sizeof *oh + sizeof *ao;
            (void)!write(fd, out, oh->len);
        } else if (in->opcode == FUSE_LOOKUP) {
            put("hung.pid", (long)in->pid);
        } else if (in->opcode == FUSE_INTERRUPT || in->opcode == FUSE_FORGET || in->opcode == FUSE_BATCH_FORGET) {
            /* no answer */
        } else {
            oh->len = sizeof *oh;
            oh->error = -38; /* ENOSYS */
            (void)!write(fd, out, oh->len);
        }
    }
}
