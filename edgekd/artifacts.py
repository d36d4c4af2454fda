"""Run directories, manifests, content hashes and atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# Libraries whose versions every manifest and report records.
TRACKED_LIBRARIES = (
    "torch",
    "torchvision",
    "timm",  # only with the edgekd[timm] extra
    "nncf",
    "torch-pruning",
    "torchao",
    "onnx",
    "onnxruntime",
    "openvino",
    "numpy",
    "edgekd",
)


@dataclass
class Artifact:
    """A named output of a stage: a file or folder inside the run directory, with its hash."""

    name: str
    path: str  # relative to the run directory
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(**data)


def library_versions() -> dict[str, str]:
    """Versions of python and the tracked libraries, read without importing them."""
    out = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def sha256_path(path: Path) -> str:
    """Hash of a file's bytes, or of a folder's relative file names and bytes."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """Identity of a folder's content without reading it: every file's relative path, size and
    mtime (an ImageFolder tree of many images is walked in milliseconds, not hashed)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return sha256_json(
        [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    )


def content_digest(path: Path) -> str:
    """What a stage key records of a file or folder it reads: a file's bytes, a folder's
    listing (`folder_digest`), or "missing"."""
    if path.is_file():
        return sha256_path(path)
    if path.is_dir():
        return "folder:" + folder_digest(path)
    return "missing"


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it onto `path` (file or folder).

    A crash leaves `path` as it was: either the old complete version or nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    try:
        data = read_json(stage_dir / MANIFEST)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def find_output(run_dir: Path, name: str) -> tuple[dict[str, Any], Artifact] | None:
    """The finished stage of the run that last produced the artifact `name`, found through
    the run's manifests (not by folder names): (its manifest, the artifact)."""
    found = None
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir()) if run_dir.is_dir() else []:
        manifest = read_manifest(folder)
        if manifest and manifest.get("status") == "done" and name in manifest.get("outputs", {}):
            found = (manifest, Artifact.from_json(manifest["outputs"][name]))
    return found


def outputs_intact(run_dir: Path, manifest: dict[str, Any]) -> bool:
    """True when every output the manifest lists still exists with the hash it recorded."""
    for data in manifest.get("outputs", {}).values():
        art = Artifact.from_json(data)
        target = run_dir / art.path
        if not target.exists() or sha256_path(target) != art.sha256:
            return False
    return True
