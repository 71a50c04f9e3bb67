"""A directory of built TensorRT plans that several builders share, and never a partial plan.

Layout, per plan identity (`PlanIdentity.key()`: ONNX digest, GPU, TensorRT version,
precision, batch profile):

    <key>.plan   the serialized engine
    <key>.json   its manifest: sha256, size, identity, build time, verification result
    <key>.lock   an empty file builders lock; it stays (see below)
    .<key>.<host>.<pid>.<token>.tmp   a plan being written

Contract:
- A plan reaches its final name only by `os.replace` of a temp file in the same directory,
  after it was written whole, fsynced and verified (run against ONNX Runtime on the probe
  photos). The manifest is written the same way, after the plan.
- Every use checks the manifest against the bytes actually read: size, sha256 and the
  identity asked for. A truncated, altered or foreign plan is a miss: it is rebuilt, never
  copied. A copy out of the cache (into a model repository) is hashed while it is copied,
  so the bytes checked are the bytes written.

Concurrency. Pods on one node (hostPath) or many nodes (a ReadWriteMany volume) may start
at once. Correctness rests on temp + verify + rename and on the checksum on every read: a
reader sees the old whole file or the new whole file, and a plan/manifest pair caught
between two renames fails its checksum and is re-read under the lock. With that alone
several pods would each spend minutes of GPU building the same plan, so builders of one
key also serialise on `fcntl.flock` of `<key>.lock` (on NFS, Linux maps flock to a
whole-file lock the server arbitrates). The kernel drops the lock when its holder dies
(SIGKILL, OOM kill; node loss once an NFSv4 lease expires), so there is no stale lock to
clean up, and the lock file is never deleted (deleting a locked file lets two processes
lock two different inodes). Filesystems that refuse flock (ENOLCK, EOPNOTSUPP) fall back to
last-rename-wins, which stays correct. The holder of a key's lock owns that key's temp
files: any it finds were left by a dead builder and are removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
CHUNK_BYTES = 1 << 20
# A temp file of another key untouched for this long belongs to a dead builder (a build
# takes minutes); temp files of the key being built are removed at once under its lock.
STALE_TEMP_S = 3600.0
DEFAULT_LOCK_TIMEOUT_S = 1800.0
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class PlanCacheError(RuntimeError):
    """The cache could not be used (lock wait exceeded, unwritable directory)."""


@dataclass(frozen=True)
class PlanIdentity:
    """Everything a plan depends on: a plan only deserialises under the TensorRT that built
    it, is tuned for one GPU model, and serves one ONNX graph, precision and batch range."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int

    def key(self) -> str:
        gpu = "".join(c if c.isalnum() else "_" for c in self.gpu_name.lower()).strip("_")
        sm = self.compute_capability.replace(".", "")
        return (
            f"{self.onnx_sha256[:16]}-{gpu}-sm{sm}-trt{self.tensorrt_version}-{self.precision}"
            f"-b{self.min_batch}-{self.opt_batch}-{self.max_batch}"
        )


@dataclass(frozen=True)
class Manifest:
    """What is known of one cached plan; `sha256` and `size_bytes` are checked on every use."""

    identity: PlanIdentity
    sha256: str
    size_bytes: int
    built_at: str  # ISO 8601, UTC
    build_seconds: float
    verification: dict[str, Any]
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Raises ValueError on anything but a manifest of this format."""
        try:
            data = json.loads(text)
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"manifest format {data.get('format')!r}")
            identity = PlanIdentity(**data.pop("identity"))
            return cls(identity=identity, **data)
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a plan manifest: {exc}") from exc


Verify = Callable[[Path], dict[str, Any]]
"""Runs a plan file against the reference; returns what it measured, raises if it disagrees."""
Build = Callable[[Path], None]
"""Writes a serialized plan to the given path."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temp_path(directory: Path, stem: str) -> Path:
    """A fresh, recognisable temp name in `directory` (same filesystem as the final name,
    so `os.replace` is atomic)."""
    host = socket.gethostname().replace(".", "_")
    return directory / f".{stem}.{host}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def fsync_dir(directory: Path) -> None:
    """Make a rename durable. Best effort: some filesystems cannot fsync a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = temp_path(path.parent, path.name)
    try:
        with tmp.open("w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def copy_hashed(source: BinaryIO, target: Path) -> tuple[str, int]:
    """Copy an open file to `target` (fsynced); the sha256 and size of the bytes written."""
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def build_verified(tmp: Path, identity: PlanIdentity, build: Build, verify: Verify) -> Manifest:
    """Build the plan for `identity` at `tmp`, flush it to disk, verify it and describe
    it. Raises whatever `build` or `verify` raise; moving `tmp` into place is the caller's."""
    started = time.monotonic()
    build(tmp)
    with tmp.open("rb+") as file:
        os.fsync(file.fileno())
    build_seconds = time.monotonic() - started
    sha256, size = sha256_file(tmp), tmp.stat().st_size
    verification = verify(tmp)
    return Manifest(
        identity=identity,
        sha256=sha256,
        size_bytes=size,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        build_seconds=round(build_seconds, 3),
        verification=verification,
    )


def mismatch(manifest: Manifest, identity: PlanIdentity, sha256: str, size: int) -> str | None:
    """Why bytes with this sha256/size are not the plan `manifest` describes, or None."""
    if manifest.identity != identity:
        return f"its manifest describes another plan ({manifest.identity.key()})"
    if size != manifest.size_bytes:
        return f"truncated or grown: {size} bytes, manifest says {manifest.size_bytes}"
    if sha256 != manifest.sha256:
        return f"altered: sha256 {sha256[:12]}..., manifest says {manifest.sha256[:12]}..."
    return None


class PlanCache:
    """The shared directory. Safe across processes and hosts; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        poll_s: float = 0.5,
    ) -> None:
        self.directory = Path(directory)
        self.lock_timeout_s = lock_timeout_s
        self.poll_s = poll_s

    def plan_path(self, identity: PlanIdentity) -> Path:
        return self.directory / f"{identity.key()}.plan"

    def manifest_path(self, identity: PlanIdentity) -> Path:
        return self.directory / f"{identity.key()}.json"

    def copy_out(self, identity: PlanIdentity, target: Path) -> tuple[Manifest | None, str]:
        """Copy the cached plan to `target` if it is whole and is the plan asked for.

        Returns (manifest, "") on success, else (None, why it is a miss) and `target` may
        hold rejected bytes for the caller to delete.
        """
        try:
            manifest = Manifest.from_json(self.manifest_path(identity).read_text())
        except FileNotFoundError:
            return None, "not in the cache"
        except (OSError, ValueError) as exc:
            return None, f"unreadable manifest: {exc}"
        try:
            with self.plan_path(identity).open("rb") as source:
                sha256, size = copy_hashed(source, target)
        except FileNotFoundError:
            return None, "manifest without a plan"
        problem = mismatch(manifest, identity, sha256, size)
        return (None, problem) if problem else (manifest, "")

    @contextlib.contextmanager
    def lock(self, identity: PlanIdentity) -> Iterator[bool]:
        """Hold the key's build lock; yields False where the filesystem has no flock.
        Raises PlanCacheError after `lock_timeout_s` of waiting."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{identity.key()}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            yield self._acquire(fd, path)
        finally:
            os.close(fd)  # releases the flock

    def _acquire(self, fd: int, path: Path) -> bool:
        deadline = time.monotonic() + self.lock_timeout_s
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    raise
                log.warning("no flock on %s (%s): concurrent builds may repeat work", path, exc)
                return False
            if time.monotonic() >= deadline:
                raise PlanCacheError(
                    f"another builder has held {path} for over {self.lock_timeout_s:.0f} s; "
                    "if no build is running, check the cache volume's locking"
                )
            if not announced:
                log.info("waiting for another builder of the same plan (%s)", path.name)
                announced = True
            time.sleep(self.poll_s)

    def remove_stale_temps(self, identity: PlanIdentity, *, locked: bool) -> list[Path]:
        """Delete temp files of dead builders: all of this key's when its lock is held,
        others' (and this key's without a lock) once older than `STALE_TEMP_S`."""
        removed: list[Path] = []
        mine = f".{identity.key()}."
        now = time.time()
        for path in self.directory.glob(".*.tmp"):
            try:
                stale = (locked and path.name.startswith(mine)) or (
                    now - path.stat().st_mtime > STALE_TEMP_S
                )
                if stale:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
        return removed

    def discard(self, identity: PlanIdentity) -> None:
        """Drop a cached plan that failed its checks (call under the key's lock)."""
        self.manifest_path(identity).unlink(missing_ok=True)
        self.plan_path(identity).unlink(missing_ok=True)

    def store(self, identity: PlanIdentity, build: Build, verify: Verify) -> Manifest:
        """Build into a temp file, verify it, then rename it and its manifest into place.
        Call under the key's lock. Raises whatever `build` or `verify` raise; the temp file
        is removed then and the cache is left as it was."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(self.directory, identity.key())
        try:
            manifest = build_verified(tmp, identity, build, verify)
            os.replace(tmp, self.plan_path(identity))
        finally:
            tmp.unlink(missing_ok=True)
        write_atomic(self.manifest_path(identity), manifest.to_json())
        return manifest
