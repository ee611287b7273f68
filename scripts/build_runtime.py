"""Build the embedded model's runtime (xllamacpp) for this CPU's vector instructions, when it pays.

The xllamacpp wheel on PyPI is compiled for AVX2 only, so it runs anywhere. On a CPU with AVX-512
(and VNNI, its int8 dot products) the same version built for those instructions evaluates prompts
about 1.6 times as fast and decodes faster too: `benchmarks/bench_local.py --runtime` measures both
side by side. This script builds that version from its source release once, keeps the wheel in
the cache and installs it; it does nothing when the CPU has no AVX-512 or the installed runtime
already uses it. The flags are chosen one by one from /proc/cpuinfo rather than `-march=native`,
which also turns on AMX where a CPU advertises it, and some virtual machines fault on AMX.

    .venv/bin/python scripts/build_runtime.py          # build if it pays, else say why not
    QASYNTH_PREBUILT_RUNTIME=1 bash scripts/setup.sh   # keep the PyPI wheel

A build that fails, or whose runtime cannot decode a token of the embedded model, leaves the PyPI
wheel in place and says so: the service works either way, only slower.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# /proc/cpuinfo flag -> the llama.cpp (ggml) CMake option that compiles for it.
FLAGS: dict[str, str] = {
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
    "avx512vbmi": "GGML_AVX512_VBMI",
}
# GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw: all are needed.
AVX512_BASE = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
# Off: llguidance and BoringSSL are fetched from crates.io and GitHub at build time, and the
# runtime serves loopback HTTP only.
FIXED = (
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_LLGUIDANCE=OFF",
    "-DLLAMA_BUILD_BORINGSSL=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
PROBE = (
    "import importlib.metadata, sys, xllamacpp\n"
    "sys.stdout.write(importlib.metadata.version('xllamacpp') + '\\n' + xllamacpp.get_system_info())"
)


def say(message: str) -> None:
    print(f"build_runtime: {message}", file=sys.stderr, flush=True)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return set(value.split())
    return set()


def cmake_options(flags: set[str]) -> list[str]:
    """The CMake options for this CPU's AVX-512 extensions; empty when it lacks the base set."""
    if not all(f in flags for f in AVX512_BASE):
        return []
    return ["-DGGML_AVX512=ON", *(f"-D{option}=ON" for flag, option in FLAGS.items() if flag in flags)]


def installed_runtime(python: str) -> tuple[str, str] | None:
    """The installed xllamacpp's version and what it was compiled for, as llama.cpp prints it
    ("AVX2 = 1 | …"); None when it is not installed."""
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    version, _, features = done.stdout.partition("\n")
    return version, features


def smoke(python: str) -> bool:
    """Load the embedded model and decode a few tokens in a child: an instruction the CPU lacks
    kills the child, not this script."""
    code = (
        "import asyncio\n"
        "from service.providers import _gguf\n"
        "from service.providers.base import CompletionRequest, Message\n"
        "from service.providers.local import LocalProvider\n"
        "async def main():\n"
        "    p = LocalProvider(packaged=_gguf.DEFAULT_MODEL, slots=1, threads=1)\n"
        "    try:\n"
        "        c = await p.complete(CompletionRequest(system='Answer briefly.', "
        "messages=(Message('user', 'Name an R function.'),), temperature=0.0, max_tokens=4))\n"
        "        assert c.usage.output_tokens > 0, c\n"
        "    finally:\n"
        "        await p.aclose()\n"
        "asyncio.run(main())\n"
    )
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run([python, "-c", code], cwd=root, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        say("the new runtime did not decode a token within 15 minutes")
        return False
    if done.returncode != 0:
        say(f"the new runtime failed its first decode (exit {done.returncode}): {done.stderr[-800:]}")
    return done.returncode == 0


def pip(python: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [python, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(command, text=True, capture_output=True, check=False)


def build(python: str, version: str, options: list[str], into: Path) -> Path | None:
    env = dict(os.environ)
    env["CMAKE_ARGS"] = " ".join([*FIXED, *options])
    env.setdefault("NPROC", str(len(os.sched_getaffinity(0))))
    into.mkdir(parents=True, exist_ok=True)
    log = into / "build.log"
    with tempfile.TemporaryDirectory(prefix="qasynth-runtime-") as tmp, log.open("w") as out:
        say(
            f"building xllamacpp {version} with {' '.join(options)}: about 8 minutes on 2 cores; log in {log}"
        )
        command = [python, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps"]
        command += ["--no-binary", "xllamacpp", f"xllamacpp=={version}", "-w", tmp]
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        wheels = list(Path(tmp).glob("xllamacpp-*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
            say(f"the build failed (exit {done.returncode}); keeping the PyPI wheel. The log ends:\n{tail}")
            return None
        return Path(shutil.move(str(wheels[0]), into / wheels[0].name))


def plan(python: str) -> tuple[str | None, list[str], tuple[str, str] | None]:
    """Why no build is wanted (None: one is), the CMake options, and the installed runtime."""
    if os.environ.get("QASYNTH_PREBUILT_RUNTIME"):
        return "QASYNTH_PREBUILT_RUNTIME is set: keeping the PyPI wheel", [], None
    options = cmake_options(cpu_flags())
    if not options:
        return "this CPU has no AVX-512: the PyPI wheel (AVX2) is already the right build", [], None
    installed = installed_runtime(python)
    if installed is None:
        return "xllamacpp is not installed in this environment: nothing to build for", options, None
    if "AVX512 = 1" in installed[1]:
        return "the installed runtime already uses AVX-512", options, installed
    return None, options, installed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python", default=sys.executable, help="the environment to install into")
    parser.add_argument("--cache", type=Path, default=None, help="where built wheels are kept")
    parser.add_argument(
        "--wanted",
        action="store_true",
        help="only say, by the exit status, whether a build would run (0: yes)",
    )
    args = parser.parse_args()
    reason, options, installed = plan(args.python)
    if args.wanted:
        return 0 if reason is None else 1
    if reason is not None or installed is None:
        say(reason or "nothing to do")
        return 0
    version, _ = installed
    tag = "-".join(o.removeprefix("-DGGML_").removesuffix("=ON").lower() for o in options)
    cache = (
        args.cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qasynth" / "runtime"
    )
    kept = cache / f"{version}-{tag}"
    wheel = next(iter(sorted(kept.glob("xllamacpp-*.whl"))), None) or build(
        args.python, version, options, kept
    )
    if wheel is None:
        return 0
    prebuilt = f"xllamacpp=={version}"
    done = pip(args.python, "install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    if done.returncode != 0:
        say(f"installing {wheel.name} failed: {done.stderr[-800:]}")
        return 0
    if not smoke(args.python):
        shutil.rmtree(kept, ignore_errors=True)
        pip(
            args.python, "install", "-q", "--no-deps", "--force-reinstall", "--only-binary", ":all:", prebuilt
        )
        say("reinstalled the PyPI wheel")
        return 0
    say(
        f"installed xllamacpp {version} built for {' '.join(o.removeprefix('-DGGML_').split('=')[0] for o in options)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
