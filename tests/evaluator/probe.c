/* Native code a snippet could bring with it (written as bytes, then dyn.load()ed): each
   call tries one way out of the snippet's own process and reports errno (0: it worked).
   The hostile tests build this with the host's C compiler; the sandbox has none. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

static int outcome(long rc) { return rc < 0 ? errno : 0; }

/* results[i] for each probe, in the order of PROBES in test_isolation.py */
void qs_probe(int *target, int *results) {
    pid_t p = (pid_t)*target;
    int i = 0;
    char buf[16];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", p);
    results[i++] = outcome(ptrace(PTRACE_ATTACH, p, 0, 0));
    results[i++] = outcome(process_vm_readv(p, &local, 1, &remote, 1, 0));
    results[i++] = outcome(open(path, O_RDWR));
    results[i++] = outcome(kill(p, 0));
    results[i++] = outcome(syscall(SYS_tgkill, p, p, 0));
    results[i++] = outcome(kill(-p, 0));
    results[i++] = outcome(kill(-1, 0));
    results[i++] = outcome(kill(0, 0));
    results[i++] = outcome(syscall(SYS_pidfd_open, p, 0));
    results[i++] = outcome(fcntl(1, F_SETOWN, p));
    results[i++] = outcome(prlimit(p, RLIMIT_NOFILE, NULL, &(struct rlimit){0}));
    results[i++] = outcome(setpriority(PRIO_PROCESS, p, getpriority(PRIO_PROCESS, p)));
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    results[i++] = outcome(syscall(SYS_io_uring_setup, 1, &params));
    results[i++] = outcome(unshare(CLONE_NEWUSER));
    results[i++] = outcome(unshare(CLONE_NEWNS));
    results[i++] = outcome(syscall(SYS_bpf, 0, NULL, 0));
    results[i++] = outcome(syscall(SYS_userfaultfd, 0));
    results[i++] = outcome(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -4 /* user */, 1));
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    results[i++] = outcome(syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
    results[i++] = outcome(shmget(IPC_PRIVATE, 1 << 20, IPC_CREAT | 0600));
    results[i++] = outcome(semget(IPC_PRIVATE, 1, IPC_CREAT | 0600));
    results[i++] = outcome(msgget(IPC_PRIVATE, IPC_CREAT | 0600));
    results[i++] = outcome(syscall(SYS_mq_open, "qasynth-probe", O_CREAT | O_RDWR, 0600, NULL));
    results[i++] = outcome(syscall(SYS_memfd_create, "probe", 0));
    results[i++] = outcome(setxattr(".", "user.qasynth", "x", 1, 0));
    results[i++] = outcome(syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL));
    results[i++] = outcome(syscall(SYS_clone3, NULL, 0));
}

/* How often `a` immediately followed by `b` occurs in this process's anonymous memory
   (heap, stack, R's pages). The two halves are searched for apart, so the joined text
   exists only where someone else put it. */
void qs_scan(char **a, char **b, int *count) {
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    size_t la = strlen(*a), lb = strlen(*b);
    *count = -1;
    if (!maps) return;
    *count = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long lo, hi;
        char perms[5];
        int name = 0;
        if (sscanf(line, "%lx-%lx %4s %*s %*s %*s %n", &lo, &hi, perms, &name) < 3) continue;
        char *rest = line + name;
        if (perms[0] != 'r' || rest[0] == '/' || strncmp(rest, "[vvar", 5) == 0 || strncmp(rest, "[vsys", 5) == 0)
            continue;
        for (char *p = (char *)lo; p + la + lb <= (char *)hi; p++) {
            p = memmem(p, (char *)hi - p - lb, *a, la);
            if (!p) break;
            if (memcmp(p + la, *b, lb) == 0) (*count)++;
        }
    }
    fclose(maps);
}

/* Leave every descriptor this process shares with others in a state that would break
   their next writer: not appending any more, positioned just under the file-size limit. */
void qs_unappend(int *touched) {
    *touched = 0;
    for (int fd = 1; fd < 64; fd++) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0) continue;
        if (fcntl(fd, F_SETFL, flags & ~O_APPEND) == 0 && lseek(fd, 60 << 20, SEEK_SET) >= 0) (*touched)++;
    }
}
