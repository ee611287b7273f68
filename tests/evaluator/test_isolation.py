"""A snippet reaches nothing but its own run: not the worker, not other snippets, not the kernel.

Each case is an attack written the way a hostile answer would write it, run through a real
pool in real bubblewrap. Where plain R cannot go far enough, the snippet brings native code
with it: `probe.c`, built here with the host's compiler, written into the sandbox as bytes
and `dyn.load()`ed, so the calls come from the snippet's own process, as an attacker's would.
"""

from __future__ import annotations

import errno
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import evaluator
from evaluator import Limits, WorkerPool
from tests.evaluator.conftest import needs_sandbox

pytestmark = [needs_sandbox, pytest.mark.sandbox, pytest.mark.asyncio(loop_scope="module")]

LIMITS = Limits(wall_s=8.0, cpu_s=8.0)
EVALUATOR_DIR = str(Path(evaluator.__file__).resolve().parent)

# What qs_probe tries, in its order, and the answer the sandbox must give.
PROBES: list[tuple[str, int]] = [
    ("ptrace the worker", errno.EPERM),
    ("process_vm_readv the worker", errno.EPERM),
    ("open /proc/<worker>/mem read-write", errno.EACCES),
    ("signal the worker", errno.EPERM),
    ("tgkill the worker", errno.EPERM),
    ("signal the worker's process group", errno.EPERM),
    ("signal every process (-1)", errno.EPERM),
    ("signal its own process group (0)", errno.EPERM),
    ("pidfd_open the worker", errno.EPERM),
    ("F_SETOWN a descriptor to the worker (SIGIO)", errno.EPERM),
    ("prlimit the worker", errno.EPERM),
    ("setpriority of the worker", errno.EPERM),
    ("io_uring_setup", errno.EPERM),
    ("unshare a user namespace", errno.EPERM),
    ("unshare a mount namespace", errno.EPERM),
    ("bpf", errno.EPERM),
    ("userfaultfd", errno.EPERM),
    ("keyctl (keyrings outlive processes)", errno.EPERM),
    ("perf_event_open", errno.EPERM),
    ("SysV shmget", errno.EPERM),
    ("SysV semget", errno.EPERM),
    ("SysV msgget", errno.EPERM),
    ("POSIX mq_open", errno.EPERM),
    ("memfd_create (memory no limit counts)", errno.EPERM),
    ("setxattr on the work dir (survives a wipe)", errno.EPERM),
    ("mount", errno.EPERM),
    ("clone3 (its flags cannot be inspected)", errno.ENOSYS),
]


@pytest.fixture(scope="module")
def probe_hex(tmp_path_factory: pytest.TempPathFactory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("the isolation tests need a C compiler on the host (apt-get install gcc)")
    out = tmp_path_factory.mktemp("probe") / "probe.so"
    source = Path(__file__).with_name("probe.c")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-s", "-o", str(out), str(source)], check=True)
    return out.read_bytes().hex()


def load_probe(hex_text: str) -> str:
    """R that writes the probe into the sandbox and loads it."""
    return (
        f"h <- '{hex_text}'\n"
        "n <- nchar(h)\n"
        "writeBin(as.raw(strtoi(substring(h, seq(1, n, 2), seq(2, n, 2)), 16L)), 'probe.so')\n"
        "invisible(dyn.load(file.path(getwd(), 'probe.so')))\n"
        "ppid <- as.integer(strsplit(readLines('/proc/self/stat'), ' ')[[1]][4])\n"
    )


async def test_native_code_reaches_neither_the_worker_nor_the_kernels_risky_parts(probe_hex: str) -> None:
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        r = await pool.run(load_probe(probe_hex) + f"cat(.C('qs_probe', ppid, integer({len(PROBES)}))[[2]])")
        after = await pool.run("cat('alive')")
    assert r.verdict == "passed", r
    got = [int(v) for v in r.stdout.split()]
    wrong = {
        name: f"{errno.errorcode.get(g, g) if g else 'it worked'} (want {errno.errorcode[want]})"
        for (name, want), g in zip(PROBES, got, strict=True)
        if g != want
    }
    assert not wrong, wrong
    assert after.verdict == "passed" and after.stdout == "alive" and pool.restarts == 0


async def test_a_snippet_cannot_take_over_the_worker() -> None:
    # The worker once unserialised what a child sent it: an environment whose `verdict` is an
    # active binding ran in the worker itself, and every later snippet forked from it.
    attack = (
        "e <- new.env()\n"
        "makeActiveBinding('verdict', function() {\n"
        "  assign('planted', 42, envir = globalenv()); options(planted = TRUE)\n"
        "  Sys.setenv(PLANTED = 'yes'); set.seed(7); 'passed'\n"
        "}, e)\n"
        "parallel:::sendMaster(e)\n"
        "system('sleep 30 &')\n"
        "stop('this snippet failed')"
    )
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        hit = await pool.run(attack)
        later = await pool.run(
            "cat(exists('planted'), is.null(getOption('planted')), Sys.getenv('PLANTED'), '|')\n"
            "cat(runif(1) != runif(1))"
        )
        seeds = [await pool.run("cat(sample(1e9, 1))") for _ in range(2)]
        failing = await pool.run("stop('a later client failed')")
    assert hit.verdict != "passed", hit
    assert later.verdict == "passed" and later.stdout == "FALSE TRUE  |TRUE", later
    assert seeds[0].stdout != seeds[1].stdout  # no fixed seed
    assert failing.verdict == "runtime_error" and failing.message == "a later client failed"


async def test_no_earlier_snippet_is_in_a_later_snippets_memory(probe_hex: str) -> None:
    token = secrets.token_hex(12)
    head, tail = "QASYNTH-SECRET-", token
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        first = await pool.run(
            f"x <- '{head}{tail}'\ny <- paste(rep(x, 1000), collapse = ' ')\n"
            f"Sys.setenv(S = x); options(s = x); writeLines(y, 'secret.txt'); cat(nchar(y))"
        )
        # The halves stand apart in the scanner's own code; the control string is joined
        # at run time, so the scan must find it: the scan works.
        scan = await pool.run(
            load_probe(probe_hex)
            + f"a <- '{head}'\nb <- '{tail}'\n"
            + "ctl_a <- 'CONTROL-'\nctl_b <- 'MARKER'\nctl <- paste0(ctl_a, ctl_b)\n"
            + "cat(.C('qs_scan', a, b, 0L)[[3]], .C('qs_scan', ctl_a, ctl_b, 0L)[[3]])"
        )
    assert first.verdict == "passed", first
    assert scan.verdict == "passed", scan
    secret_hits, control_hits = (int(v) for v in scan.stdout.split())
    assert control_hits >= 1
    assert secret_hits == 0


async def test_forged_and_oversized_messages_to_the_worker() -> None:
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        forged = await pool.run(
            "parallel:::sendMaster(serialize(list(verdict = 'passed', message = strrep('A', 2e7)), NULL))\n"
            "stop('the real outcome')"
        )
        huge = await pool.run("parallel:::sendMaster(as.raw(rep(65L, 4e7)))\nSys.sleep(1)")
        after = await pool.run("cat('ok')")
    assert forged.verdict != "passed", forged.verdict
    assert len(forged.message or "") < 10_000
    assert huge.verdict != "passed" and len(huge.message or "") < 10_000
    assert after.verdict == "passed" and after.stdout == "ok"


async def test_ipc_objects_do_not_outlive_the_snippet() -> None:
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        made = await pool.run(
            "s <- system('ipcmk -M 300M', intern = TRUE)\n"
            "cat(if (is.null(attr(s, 'status'))) 0L else attr(s, 'status'))"
        )
        seen = await pool.run(
            "cat(length(grep('^0x', system('ipcs -m -s -q', intern = TRUE))), file.exists('/dev/mqueue'))"
        )
    assert made.verdict in ("passed", "runtime_error"), made
    assert "Shared memory id" not in made.stdout
    assert seen.verdict == "passed" and seen.stdout.split()[0] == "0", seen


async def test_no_nested_namespaces_compilers_or_interpreters() -> None:
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        r = await pool.run(
            "cat(system('unshare -Ur id'), '\\n')\n"
            "tools <- c('gcc', 'cc', 'c++', 'as', 'ld', 'python3', 'perl', 'tclsh')\n"
            "cat(nzchar(Sys.which(tools)), '\\n')\n"
            "cat(length(Sys.glob(c('/usr/lib/gcc/*/*/cc1', '/usr/lib/python3*/os.py'))), '\\n')"
        )
    assert r.verdict == "passed", r
    lines = [line.split() for line in r.stdout.strip().splitlines() if not line.startswith("unshare")]
    assert lines[0] != ["0"]  # unshare failed
    assert "TRUE" not in lines[1], lines[1]
    assert lines[2] == ["0"]


async def test_only_what_r_needs_is_visible() -> None:
    here = EVALUATOR_DIR
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        r = await pool.run(
            "for (d in c('/run', '/var/lib', '/var/log', '/sys/fs', '/sys/class', '/sys/devices', '/opt',\n"
            "            '/srv', '/home', '/root', '/app', '/work', "
            f"'{here}', '{sys.prefix}', '/usr/local/bin', '/usr/local/share'))\n"
            "  cat(d, length(list.files(d, all.files = TRUE, no.. = TRUE)), '\\n')\n"
            "cat('usr/local', list.files('/usr/local'), '\\n')\n"
            "cat('var', list.files('/var', recursive = TRUE, include.dirs = TRUE, all.files = TRUE), '\\n')\n"
            "cat('sys', list.files('/sys', recursive = TRUE, include.dirs = TRUE, all.files = TRUE), '\\n')\n"
            "cat('etc', list.files('/etc'), '\\n')\n"
            "cat('root', list.files('/'), '\\n')"
        )
    assert r.verdict == "passed", r
    rows = [line.split() for line in r.stdout.strip().splitlines()]
    counts = {row[0]: row[1] for row in rows if row[0].startswith("/")}
    assert set(counts.values()) == {"0"}, counts
    listed = {row[0]: row[1:] for row in rows if not row[0].startswith("/")}
    assert set(listed["usr/local"]) <= {"lib"}
    assert {name.split("/")[0] for name in listed["var"]} <= {"cache"}  # the font cache alone
    # and of /sys only the huge-page settings the C library reads
    assert all(name.startswith("kernel") for name in listed["sys"]), listed["sys"]
    assert "kernel/mm/transparent_hugepage/enabled" in listed["sys"]
    assert "shadow" not in listed["etc"] and "passwd" not in listed["etc"] and "R" in listed["etc"]
    top = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys", "tmp", "usr", "var"}
    assert set(listed["root"]) <= top


async def test_shared_descriptors_cannot_be_left_broken(probe_hex: str) -> None:
    # Cleared O_APPEND and an offset just under the file-size limit on every descriptor the
    # snippet shares: the next snippet's output and progress must not land there.
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        broke = await pool.run(load_probe(probe_hex) + "invisible(.C('qs_unappend', 0L))")
        after = await pool.run("cat('fine\\n')\nx <- 1\nstop('line three')")
    # Its own result file was among them: that is its own verdict's business.
    assert broke.verdict in ("passed", "killed"), broke
    assert after.verdict == "runtime_error" and after.stdout == "fine\n" and after.line == 3, after


async def test_a_garbled_or_oversized_result_is_that_snippets_verdict() -> None:
    # The child's result is a memory file the snippet can find and write: it may forge its own
    # verdict (and nobody else's), but nothing it writes there can break the pool.
    find = (
        "fds <- list.files('/proc/self/fd', full.names = TRUE)\n"
        "res <- fds[grepl('qasynth-result', Sys.readlink(fds))][1]\n"
    )
    me = "tools::pskill(Sys.getpid(), 9L)\n"
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        huge = await pool.run(find + "writeBin(charToRaw(strrep('A', 3e7)), res)\n" + me)
        garbled = await pool.run(
            find + "writeLines(c('qasynth-result 1', 'verdict\\tbogus', 'end'), res)\n" + me
        )
        after = await pool.run("cat('ok')")
    assert huge.verdict == "killed" and "could not be read" in (huge.message or ""), huge
    assert garbled.verdict == "killed" and "unknown verdict" in (garbled.message or ""), garbled
    assert len(huge.message or "") < 500
    assert after.verdict == "passed" and after.stdout == "ok"
    assert pool.restarts >= 1  # in doubt, the worker was replaced


async def test_a_scratch_space_left_locked_or_pointing_elsewhere_is_wiped() -> None:
    # Directories without permissions, a read-only work dir, files in /tmp and /dev/shm, and the
    # work dir replaced by a link to /usr (which a careless wipe would walk whole, or follow).
    async with WorkerPool(workers=1, limits=LIMITS) as pool:
        locked = await pool.run(
            "dir.create('d/e', recursive = TRUE); writeLines('x', 'd/e/f')\n"
            "Sys.chmod('d/e', '000'); Sys.chmod('d', '000')\n"
            "writeLines('y', '/dev/shm/s'); writeLines('z', '/tmp/t'); Sys.chmod(getwd(), '500')"
        )
        first = await pool.run(
            "cat(length(list.files(all.files = TRUE, no.. = TRUE)), file.exists('/dev/shm/s', '/tmp/t'), "
            "file.access('.', 2), getwd())"
        )
        linked = await pool.run(
            "setwd('/tmp'); unlink('work', recursive = TRUE); file.symlink('/usr', 'work')"
        )
        second = await pool.run("cat(getwd(), nzchar(Sys.readlink('/tmp/work')), length(list.files()))")
        restarts = pool.restarts
    assert locked.verdict == "passed" and linked.verdict == "passed", (locked, linked)
    assert linked.duration_ms < 2000, linked
    assert first.stdout == "0 FALSE FALSE 0 /tmp/work", first
    assert second.stdout == "/tmp/work FALSE 0", second
    assert restarts == 0  # wiped in place, not by a new worker
