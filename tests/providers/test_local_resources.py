"""What the embedded model is given: cores from the affinity mask and cgroup quota, slots, settings,
and the instruction sets its runtime is built for."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from service.providers._cpu import available_cores, cgroup_cpu_limit
from service.providers.local import LocalProvider, _compiled_for, _SlotPool
from service.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def _tree(root: Path, membership: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(membership)
    for name, text in files.items():
        path = root / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_cgroup_v2_quota_of_the_process_or_a_parent(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        "0::/jobs/qasynth\n",
        {
            "cpu.max": "max 100000\n",
            "jobs/cpu.max": "150000 100000\n",
            "jobs/qasynth/cpu.max": "max 100000\n",
        },
    )
    assert cgroup_cpu_limit(root) == 1.5
    # 1.5 CPUs cannot keep two threads busy: rounded down.
    assert available_cores(root) == 1


def test_cgroup_v2_without_quota(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) is None
    assert available_cores(root) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota_inside_a_container(tmp_path: Path) -> None:
    # The cgroup namespace shows "/" while the limit sits at the controller's mount.
    root = _tree(
        tmp_path,
        "12:memory:/\n4:cpu,cpuacct:/\n0::/\n",
        {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
    )
    assert cgroup_cpu_limit(root) == 3.0
    assert available_cores(root) == min(3, len(os.sched_getaffinity(0)))


def test_cgroup_v1_unlimited_and_unreadable(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "a",
        "1:cpu:/\n",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert cgroup_cpu_limit(root) is None
    assert cgroup_cpu_limit(tmp_path / "nowhere") is None
    assert available_cores(tmp_path / "nowhere") == len(os.sched_getaffinity(0))


def test_this_machine_is_counted_by_affinity_not_cpu_count() -> None:
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0)) <= (os.cpu_count() or 1)


def test_local_settings_from_the_environment() -> None:
    defaults = Settings.from_env({})
    assert (defaults.local_slots, defaults.local_threads, defaults.local_context) == (4, 0, 4096)
    s = Settings.from_env(
        {"QASYNTH_LOCAL_SLOTS": "2", "QASYNTH_LOCAL_THREADS": "3", "QASYNTH_LOCAL_CONTEXT": "2048"}
    )
    assert (s.local_slots, s.local_threads, s.local_context) == (2, 3, 2048)


@pytest.mark.parametrize(
    ("name", "value"),
    [("QASYNTH_LOCAL_SLOTS", "0"), ("QASYNTH_LOCAL_THREADS", "-1"), ("QASYNTH_LOCAL_CONTEXT", "100")],
)
def test_bad_local_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_threads_default_to_the_available_cores(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    auto = LocalProvider(model_path=path).describe()
    assert auto["threads"] == str(available_cores())
    assert (auto["slots"], auto["concurrency"], auto["context"]) == ("4", "4", "4096")
    pinned = LocalProvider(model_path=path, slots=2, threads=1, context=2048).describe()
    assert (pinned["slots"], pinned["concurrency"], pinned["threads"]) == ("2", "2", "1")


async def test_slot_pool_prefers_the_slot_holding_the_prompt() -> None:
    pool = _SlotPool(3)
    first, holds = await pool.acquire("a")
    assert (first, holds) == (0, False)
    pool.release(first, "a")
    other, _ = await pool.acquire("b")
    assert other == 1  # least recently released, not the slot holding "a"
    again, holds = await pool.acquire("a")
    assert (again, holds) == (0, True)
    pool.release(other, "b")
    pool.release(again, "a")


async def test_slot_pool_bounds_calls_and_a_cancelled_waiter_takes_no_slot() -> None:
    pool = _SlotPool(1)
    slot, _ = await pool.acquire("a")
    waiter = asyncio.create_task(pool.acquire("a"))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # one slot: the second call waits
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.release(slot, "a")
    assert await asyncio.wait_for(pool.acquire("a"), 1) == (0, True)


async def test_ready_lists_the_local_lane_with_a_fixed_limit_of_the_slots(tmp_path: Path) -> None:
    from litestar.testing import AsyncTestClient

    from service.app import create_app

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    provider = LocalProvider(model_path=path, slots=3, threads=1)
    settings = Settings(default_provider="local", sandbox="none", local_model_path=str(path))
    async with AsyncTestClient(create_app(settings, providers={"local": provider})) as client:
        body = (await client.get("/ready")).json()
    [lane] = body["lanes"]
    assert (lane["provider"], lane["model"]) == ("local", "m")
    # llama.cpp never throttles: the limit is the slots, fixed, not adaptive.
    assert (lane["adaptive"], lane["limit"], lane["max_limit"]) == (False, 3, 3)
    assert (lane["in_flight"], lane["queued"], lane["breaker"]) == (0, 0, "closed")
    assert body["providers"]["local"]["concurrency"] == "3"


def _build_runtime() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_runtime", ROOT / "scripts" / "build_runtime.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ZEN4 = (
    "fpu sse sse2 ssse3 fma avx f16c avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl "
    "avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq"
)


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        (
            ZEN4,
            ["-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AVX512_VBMI=ON"],
        ),
        # Skylake-X: AVX-512 without VNNI, BF16 or VBMI.
        ("fma avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl", ["-DGGML_AVX512=ON"]),
        # AVX-512 foundation alone is not what GGML_AVX512 compiles for (it adds -mavx512bw and -mavx512vl).
        ("fma avx avx2 avx512f avx512cd", []),
        ("fma avx avx2", []),
    ],
)
def test_the_runtime_is_built_only_for_instructions_the_cpu_has(
    tmp_path: Path, flags: str, options: list[str]
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    build = _build_runtime()
    assert build.cmake_options(build.cpu_flags(cpuinfo)) == options
    # AMX is never asked for, even where the CPU advertises it.
    assert not any(
        "AMX" in o for o in build.cmake_options(build.cpu_flags(cpuinfo) | {"amx_int8", "amx_tile"})
    )


def test_no_cpuinfo_means_no_build(tmp_path: Path) -> None:
    build = _build_runtime()
    assert build.cmake_options(build.cpu_flags(tmp_path / "missing")) == []


def test_what_the_runtime_was_compiled_for_is_read_from_llama_cpp() -> None:
    wheel = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | OPENMP = 1 | "
    built = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AMX_INT8 = 0 | "
    assert _compiled_for(wheel) == "SSE3 SSSE3 AVX AVX2 F16C FMA BMI2 OPENMP"
    assert _compiled_for(built) == "SSE3 AVX2 AVX512 AVX512_VBMI AVX512_VNNI"
