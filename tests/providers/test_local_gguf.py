"""Assembling GGUF weights from part packages: real packages on sys.path, real files, real hashing."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import ProviderNotConfigured, ProviderUnavailable
from service.providers import _gguf
from service.providers.base import CompletionRequest, Message
from service.providers.local import LocalProvider, local_available
from service.settings import Settings

PART_SIZES = (4096, 4096, 1000)


def _write_packages(root: Path, prefix: str, payloads: list[bytes]) -> tuple[str, ...]:
    """Installs part packages laid out like the real ones: `<pkg>/__init__.py` and `<pkg>/data/partNN.bin`."""
    modules = []
    for i, payload in enumerate(payloads, 1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(payload)
        modules.append(pkg.name)
    return tuple(modules)


@pytest.fixture
def packaged(tmp_path: Path) -> Iterator[tuple[_gguf.PackagedModel, list[bytes]]]:
    payloads = [os.urandom(n) for n in PART_SIZES]
    site = tmp_path / "site"
    prefix = f"qasynth_test_part_{tmp_path.name.replace('-', '_')}_"
    modules = _write_packages(site, prefix, payloads)
    model = _gguf.PackagedModel(
        model_id="tiny-test-model",
        filename="tiny-test-model.gguf",
        modules=modules,
        size=sum(PART_SIZES),
        sha256=hashlib.sha256(b"".join(payloads)).hexdigest(),
        requirements=("tiny-test-part1==1", "tiny-test-part2==1", "tiny-test-part3==1"),
    )
    sys.path.insert(0, str(site))
    try:
        yield model, payloads
    finally:
        sys.path.remove(str(site))


def test_finds_parts_in_order(packaged: tuple[_gguf.PackagedModel, list[bytes]]) -> None:
    model, _ = packaged
    parts = _gguf.find_parts(model)
    assert parts is not None
    assert [p.name for p in parts] == ["part01.bin", "part02.bin", "part03.bin"]


def test_missing_package_means_not_installed() -> None:
    model = _gguf.PackagedModel(
        model_id="absent",
        filename="absent.gguf",
        modules=("qasynth_no_such_part_package_1",),
        size=1,
        sha256="0" * 64,
        requirements=("absent-part1==1",),
    )
    assert _gguf.find_parts(model) is None
    with pytest.raises(FileNotFoundError, match="absent-part1==1"):
        _gguf.ensure_model(model)


def test_assembles_verifies_and_reuses(
    packaged: tuple[_gguf.PackagedModel, list[bytes]], tmp_path: Path
) -> None:
    model, payloads = packaged
    cache = tmp_path / "cache"
    assert not _gguf.is_cached(model, cache)
    verified = _gguf.ensure_model(model, cache)
    assert verified.path == cache / model.filename
    assert verified.path.read_bytes() == b"".join(payloads)
    assert _gguf.is_cached(model, cache)
    # No temporary file is left behind.
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [model.filename, model.filename + ".lock", model.filename + ".verified.json"]
    )
    # A second call trusts the stamp: it does not rewrite the file.
    mtime = verified.path.stat().st_mtime_ns
    assert _gguf.ensure_model(model, cache).path == verified.path
    assert verified.path.stat().st_mtime_ns == mtime


def test_file_changed_after_verification_is_reassembled(
    packaged: tuple[_gguf.PackagedModel, list[bytes]], tmp_path: Path
) -> None:
    model, payloads = packaged
    cache = tmp_path / "cache"
    path = _gguf.ensure_model(model, cache).path
    path.write_bytes(b"x" * model.size)
    assert not _gguf.is_cached(model, cache)
    assert _gguf.ensure_model(model, cache).path.read_bytes() == b"".join(payloads)


def test_corrupt_part_is_refused_and_nothing_is_cached(
    packaged: tuple[_gguf.PackagedModel, list[bytes]], tmp_path: Path
) -> None:
    model, _ = packaged
    parts = _gguf.find_parts(model)
    assert parts is not None
    data = bytearray(parts[1].read_bytes())
    data[100] ^= 0xFF
    parts[1].write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(_gguf.ModelIntegrityError, match="SHA-256"):
        _gguf.ensure_model(model, cache)
    assert not (cache / model.filename).exists()
    assert [p.name for p in cache.iterdir()] == [model.filename + ".lock"]


def test_truncated_part_is_refused_before_reading(
    packaged: tuple[_gguf.PackagedModel, list[bytes]], tmp_path: Path
) -> None:
    model, _ = packaged
    parts = _gguf.find_parts(model)
    assert parts is not None
    parts[2].write_bytes(b"short")
    with pytest.raises(_gguf.ModelIntegrityError, match="add up to"):
        _gguf.ensure_model(model, tmp_path / "cache")


def _assemble_in_child(site: str, model: _gguf.PackagedModel, cache: str) -> str:
    sys.path.insert(0, site)
    return str(_gguf.ensure_model(model, Path(cache)).path)


def test_two_processes_assemble_once_and_agree(
    packaged: tuple[_gguf.PackagedModel, list[bytes]], tmp_path: Path
) -> None:
    model, payloads = packaged
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.starmap(_assemble_in_child, [(str(tmp_path / "site"), model, str(cache))] * 2)
    assert set(paths) == {str(cache / model.filename)}
    assert (cache / model.filename).read_bytes() == b"".join(payloads)
    assert not list(cache.glob("*.part"))


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _gguf.cache_dir() == tmp_path / "qasynth"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _gguf.cache_dir() == Path.home() / ".cache" / "qasynth"


def test_missing_model_file_is_not_configured(tmp_path: Path) -> None:
    settings = Settings(local_model_path=str(tmp_path / "nope.gguf"))
    assert not local_available(settings)
    with pytest.raises(ProviderNotConfigured, match="not a file") as info:
        LocalProvider.from_settings(settings)
    assert info.value.provider == "local"


def test_custom_file_is_described_without_loading(tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp")
    path = tmp_path / "My-Model.Q4_K_M.gguf"
    path.write_bytes(b"GGUF")
    settings = Settings(local_model_path=str(path), local_threads=1)
    assert local_available(settings)
    provider = LocalProvider.from_settings(settings)
    assert provider.default_model == "My-Model.Q4_K_M"
    described = provider.describe()
    assert described["status"] == "not started"
    assert described["model_file"] == str(path.resolve())
    assert described["sha256_verified"].startswith("false")


async def test_other_model_name_is_refused_before_loading(tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp")
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    provider = LocalProvider.from_settings(Settings(local_model_path=str(path)))
    request = CompletionRequest(system="s", messages=(Message("user", "hi"),), model="gpt-4o")
    with pytest.raises(ProviderNotConfigured, match="serves only") as info:
        await provider.complete(request)
    assert info.value.field == "model.name"
    assert provider.describe()["status"] == "not started"


async def test_unloadable_file_is_a_provider_error_not_a_crash(tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp")
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(100))
    provider = LocalProvider.from_settings(Settings(local_model_path=str(path)))
    request = CompletionRequest(system="s", messages=(Message("user", "hi"),), max_tokens=16)
    with pytest.raises(ProviderUnavailable, match=r"broken\.gguf could not start"):
        await provider.complete(request)
    assert provider.describe()["status"].startswith("failed")
    await provider.aclose()
