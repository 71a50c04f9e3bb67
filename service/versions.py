"""Version directories of a model in the repository: which exist, which are complete, and
how a new one appears all at once.

A model directory holds its shared files (`config.pbtxt`, `spec.json`, labels) and one
numbered directory per version (`1/`, `2/`, ...), as Triton reads them. A version is
*complete* when its model file, `weights.json` and `verification.json` are all there.
`ca-serve build-repo` writes a version under a hidden staging name (`.<N>.staging`, which
neither Triton nor the gateway takes for a version: not a number) and renames it into
place when every file is written, so a numbered directory never appears half-written.
Whoever copies a version by other means should do the same (copy, then rename); the
gateway's watcher also waits until a version's files have stopped changing.

Torch-free and framework-free: the repository writer and the gateway both use it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from service.spec import VERIFICATION_FILENAME, WEIGHTS_FILENAME

#: What a complete version holds besides its model file.
REQUIRED_FILES = (WEIGHTS_FILENAME, VERIFICATION_FILENAME)
#: The longest version name accepted (Triton's are int64: at most 19 digits).
MAX_VERSION_DIGITS = 19

#: A version's files as `(name, size, mtime_ns)`: changes when any of them is rewritten.
Fingerprint = tuple[tuple[str, int, int], ...]


def is_version_name(name: str) -> bool:
    """A version is a positive decimal number without a sign or leading zeros."""
    return (
        0 < len(name) <= MAX_VERSION_DIGITS
        and name.isascii()
        and name.isdigit()
        and not name.startswith("0")
    )


def numbered_versions(model_dir: Path) -> list[str]:
    """The version directories under `model_dir`, oldest first ([] when it has none or
    does not exist)."""
    if not model_dir.is_dir():
        return []
    names = [p.name for p in model_dir.iterdir() if p.is_dir() and is_version_name(p.name)]
    return sorted(names, key=int)


def next_version(model_dir: Path) -> str:
    """The number after the highest version present, or "1"."""
    versions = numbered_versions(model_dir)
    return str(int(versions[-1]) + 1) if versions else "1"


def missing_files(version_dir: Path, model_file: str) -> list[str]:
    """The files a complete version needs that `version_dir` lacks (all of them when the
    directory is absent)."""
    return [name for name in (model_file, *REQUIRED_FILES) if not (version_dir / name).is_file()]


def fingerprint(version_dir: Path, model_file: str) -> Fingerprint:
    """Size and modification time of the version's required files that exist."""
    entries = []
    for name in (model_file, *REQUIRED_FILES):
        try:
            stat = (version_dir / name).stat()
        except OSError:
            continue
        entries.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def staging_dir(model_dir: Path, version: str) -> Path:
    """Where `build-repo` writes `version` before it is published (a hidden name)."""
    return model_dir / f".{version}.staging"


def publish(staging: Path, version_dir: Path, *, replace: bool = False) -> None:
    """Move the finished `staging` directory to `version_dir` in one rename. An existing
    `version_dir` is an error (`FileExistsError`) unless `replace`: it is then renamed
    aside first and deleted after, so the version is missing for an instant but never
    half-written."""
    if version_dir.exists():
        if not replace:
            raise FileExistsError(f"{version_dir} exists")
        aside = version_dir.with_name(f".{version_dir.name}.replaced")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(version_dir, aside)
        os.rename(staging, version_dir)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.rename(staging, version_dir)
