"""Which TensorRT builds the plan, and is it the one Triton will load it with?

A serialized plan deserialises only under the TensorRT version that built it. The init
step runs in an image built FROM the pinned Triton image, with TensorRT's Python bindings
alone (the `tensorrt-cuXX-bindings` wheel, no `-libs` wheel), so the bindings load the
image's own libnvinfer: the file Triton's TensorRT backend links. This module checks that
at start-up, from what the process actually mapped, and says so in one line:

- the bindings' version equals the pin (`TENSORRT_VERSION`, deploy/versions.env);
- the libnvinfer this process loaded reports the bindings' major.minor.patch (its
  `getInferLibVersion()`, else the version in its file name);
- where Triton's TensorRT backend is present (the init image), it resolves libnvinfer to
  that very file (a pip-installed TensorRT elsewhere on the path would fail here).

The parsing and the comparison are pure functions, tested on CPU with recorded text.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PIN_ENV = "TENSORRT_VERSION"
# Where the NGC tritonserver image installs its TensorRT backend (Triton's build.py
# installs backends under /opt/tritonserver/backends/<name>).
SERVER_BACKEND = Path("/opt/tritonserver/backends/tensorrt/libtriton_tensorrt.so")
_LIBRARY = re.compile(r"^libnvinfer\.so\.(\d+(?:\.\d+)*)$")
_LDD_LINE = re.compile(r"^\s*libnvinfer\.so\.\d+\s*=>\s*(\S+)")


class TensorRTMismatch(RuntimeError):
    """The TensorRT here is not the pinned one, or not the one Triton links."""


@dataclass(frozen=True)
class TensorRTInstall:
    """What one process sees of TensorRT."""

    bindings_version: str
    library: Path | None  # the libnvinfer mapped into this process, symlinks resolved
    server_library: Path | None  # what Triton's TensorRT backend resolves it to; None: no backend
    library_version: str | None = None  # what `library` reports itself; None: use its name


def library_version(path: Path) -> str | None:
    """`10.11.0` for `.../libnvinfer.so.10.11.0`; None for a name without a full version."""
    match = _LIBRARY.search(path.name)
    if match is None or match.group(1).count(".") < 2:
        return None
    return match.group(1)


def decode_lib_version(value: int) -> str:
    """`getInferLibVersion()`'s integer as major.minor.patch: (major * 100 + minor) * 100 +
    patch from TensorRT 10 on, major * 1000 + minor * 100 + patch before."""
    if value >= 100_000:
        return f"{value // 10_000}.{value // 100 % 100}.{value % 100}"
    return f"{value // 1000}.{value // 100 % 10}.{value % 100}"


def mapped_libnvinfer(maps: str) -> Path | None:
    """The libnvinfer in a `/proc/<pid>/maps` text (not its plugin, lean or builder-resource
    siblings)."""
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "/" in path and _LIBRARY.search(Path(path).name):
            return Path(path)
    return None


def ldd_libnvinfer(ldd_output: str) -> Path | None:
    """The `libnvinfer.so.N => /path` target in `ldd` output, or None."""
    for line in ldd_output.splitlines():
        match = _LDD_LINE.match(line)
        if match and match.group(1) != "not":
            return Path(match.group(1))
    return None


def _major_minor_patch(version: str) -> str:
    return ".".join(version.split(".")[:3])


def check(install: TensorRTInstall, pin: str | None) -> str:
    """One line naming the TensorRT that builds; raises TensorRTMismatch when it is not the
    pinned one or not the library Triton links."""
    found = install.bindings_version
    if pin and found != pin and not found.startswith(pin + "."):
        raise TensorRTMismatch(
            f"TensorRT {found} here, but {PIN_ENV} pins {pin}: a plan built here would not "
            "load in the pinned Triton; rebuild the init image from deploy/versions.env"
        )
    if install.library is None:
        raise TensorRTMismatch(f"TensorRT {found}'s bindings loaded no libnvinfer.so.X.Y.Z")
    library = install.library_version or library_version(install.library)
    if library != _major_minor_patch(found):
        raise TensorRTMismatch(
            f"TensorRT bindings {found} run on {install.library} ({library}): the plan "
            "would be built by a library other than the bindings were made for"
        )
    if install.server_library is None:
        server = "no Triton TensorRT backend here to compare with"
    elif install.server_library != install.library:
        raise TensorRTMismatch(
            f"this process builds with {install.library}, but Triton's TensorRT backend "
            f"links {install.server_library}: its plans would not load in this Triton"
        )
    else:
        server = "the same file Triton's TensorRT backend links"
    pinned = f"pin {pin}" if pin else f"no {PIN_ENV} pin set"
    return f"TensorRT {found}: libnvinfer {install.library}, {server}; {pinned}"


def inspect(bindings_version: str) -> TensorRTInstall:
    """What this process has loaded (call after importing TensorRT) and what Triton's
    TensorRT backend resolves, where the backend is installed. Linux only (/proc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    loaded = mapped_libnvinfer(maps)
    server: Path | None = None
    if SERVER_BACKEND.is_file():
        result = subprocess.run(
            ["ldd", str(SERVER_BACKEND)], capture_output=True, text=True, timeout=30, check=False
        )
        linked = ldd_libnvinfer(result.stdout)
        server = Path(os.path.realpath(linked)) if linked else Path("(not found by ldd)")
    return TensorRTInstall(
        bindings_version=bindings_version,
        library=Path(os.path.realpath(loaded)) if loaded else None,
        server_library=server,
        library_version=_reported_version(loaded) if loaded else None,
    )


def _reported_version(library: Path) -> str | None:
    """What the loaded library says it is (pip's library wheels name files by soname only)."""
    try:
        function = ctypes.CDLL(str(library)).getInferLibVersion  # already loaded: same handle
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int32
    return decode_lib_version(int(function()))
