"""The seccomp filter every process in the sandbox runs under (bubblewrap loads it before R starts).

Everything is allowed but what is listed here, which fails with EPERM (clone3 with ENOSYS, so
that the C library falls back to clone, whose flags the filter can read):

- reaching another process: ptrace, process_vm_readv/writev, process_madvise, kcmp, pidfd_*;
- signals aimed at the worker (pid 2 of the sandbox), at the sandbox's reaper (pid 1), at the
  worker's process group, at every process (-1) or at the caller's own group (0), by kill,
  tkill, tgkill, rt_sigqueueinfo or rt_tgsigqueueinfo; descriptors that would send SIGIO to
  someone (fcntl F_SETOWN, F_SETOWN_EX, F_SETSIG, F_SETLEASE, F_NOTIFY; ioctl FIOSETOWN,
  SIOCSPGRP, TIOCSPGRP, TIOCSTI);
- changing another process: prlimit64, sched_setaffinity, sched_setscheduler, sched_setparam,
  sched_setattr, migrate_pages and move_pages on any pid but 0 (the caller), setpriority and
  ioprio_set on anything but the caller;
- namespaces and mounts: unshare, setns, clone with any CLONE_NEW* flag or CLONE_PARENT, mount,
  umount2, pivot_root, chroot, the new mount API (open_tree, move_mount, fsopen, fsconfig,
  fsmount, fspick, mount_setattr, open_tree_attr);
- kernel interfaces a sandbox has no use for and that widen the attack surface: io_uring_*,
  bpf, perf_event_open, userfaultfd, fanotify_init, name_to_handle_at, open_by_handle_at;
- state that outlives a process and would carry data from one snippet to the next: System V
  IPC (shm*, sem*, msg*), POSIX message queues (mq_*), keyrings (add_key, request_key,
  keyctl), extended attributes (setxattr, removexattr and their variants);
- memory no limit counts: memfd_create, memfd_secret;
- administration: kexec_*, init_module, finit_module, delete_module, reboot, swapon, swapoff,
  acct, quotactl, quotactl_fd, syslog, settimeofday, clock_settime, clock_adjtime, adjtimex,
  sethostname, setdomainname, iopl, ioperm, modify_ldt, uselib, vhangup.

Syscalls of another architecture (32-bit x86) kill the process.
"""

from __future__ import annotations

import errno
import functools
import os

from evaluator._types import SandboxUnavailable

__all__ = ["WORKER_PID", "seccomp_program"]

WORKER_PID = 2
"""The worker's pid in its sandbox: bubblewrap's reaper is 1, the command it starts is 2."""
REAPER_PID = 1

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "process_mrelease", "kcmp",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "open_tree_attr",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "bpf", "perf_event_open", "userfaultfd", "fanotify_init", "name_to_handle_at", "open_by_handle_at",
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "add_key", "request_key", "keyctl",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "setxattrat", "removexattrat",
    "memfd_create", "memfd_secret",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "modify_ldt",
    "uselib", "vhangup",
)  # fmt: skip
# x86_64 numbers of syscalls newer than the libseccomp some systems ship, so they are denied
# even where the library does not know their names.
X86_64_NUMBERS = {"open_tree_attr": 467, "setxattrat": 463, "removexattrat": 466, "memfd_secret": 447}

CLONE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_PARENT": 0x00008000,
}
FCNTL_DENIED = (8, 10, 15, 1024, 1026)  # F_SETOWN, F_SETSIG, F_SETOWN_EX, F_SETLEASE, F_NOTIFY
IOCTL_DENIED = (0x8901, 0x8902, 0x5410, 0x5412)  # FIOSETOWN, SIOCSPGRP, TIOCSPGRP, TIOCSTI
LOW32 = 0xFFFFFFFF
HINT = "install libseccomp (Debian: `apt-get install libseccomp2`) and the pyseccomp package"


@functools.cache
def seccomp_program() -> bytes:
    """The compiled BPF program (what `bwrap --seccomp FD` reads). Built once per process."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError, RuntimeError) as exc:  # the module loads libseccomp at import
        raise SandboxUnavailable(f"the seccomp filter cannot be built ({exc}): {HINT}") from exc
    eperm = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # a binary tree of syscalls, not a chain: fewer checks per call
    native_x86_64 = sc.system_arch() == sc.Arch.X86_64

    def deny(name: str, *args: object, action: int = eperm) -> None:
        try:
            f.add_rule(action, name, *args)
        except (ValueError, RuntimeError, OSError):
            number = X86_64_NUMBERS.get(name)
            if number is None or not native_x86_64 or args:
                raise
            f.add_rule(action, number)

    for name in DENIED:
        try:
            deny(name)
        except (ValueError, RuntimeError, OSError):
            continue  # a syscall this kernel and library do not have at all
    deny("clone3", action=sc.ERRNO(errno.ENOSYS))
    for flag in CLONE_FLAGS.values():
        deny("clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for target in (WORKER_PID, REAPER_PID, 0, -1, -WORKER_PID, -REAPER_PID):
        deny("kill", sc.Arg(0, sc.MASKED_EQ, LOW32, target & LOW32))
    for target in (WORKER_PID, REAPER_PID):
        for name in ("tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
            deny(name, sc.Arg(0, sc.MASKED_EQ, LOW32, target))
    for cmd in FCNTL_DENIED:
        deny("fcntl", sc.Arg(1, sc.MASKED_EQ, LOW32, cmd))
    for cmd in IOCTL_DENIED:
        deny("ioctl", sc.Arg(1, sc.MASKED_EQ, LOW32, cmd))
    for name in (
        "prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr",
        "migrate_pages", "move_pages",
    ):  # fmt: skip
        deny(name, sc.Arg(0, sc.NE, 0))
    deny("setpriority", sc.Arg(0, sc.NE, 0))  # which: PRIO_PROCESS only
    deny("setpriority", sc.Arg(1, sc.NE, 0))  # who: the caller only
    deny("ioprio_set", sc.Arg(0, sc.NE, 1))  # IOPRIO_WHO_PROCESS only
    deny("ioprio_set", sc.Arg(1, sc.NE, 0))
    fd = os.memfd_create("qasynth-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb", closefd=True) as out:
            f.export_bpf(out)
        return os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
