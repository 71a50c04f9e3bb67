"""Run a serialized TensorRT plan on the GPU, for the check before it is served.

No torch, no cuda-python: device memory and the stream come from the CUDA driver API
(`libcuda.so.1`, which the NVIDIA container runtime mounts into every GPU container) through
ctypes. TensorRT's runtime API uses the device's primary context, so the driver calls run
in that same context. TensorRT 10's tensor-address API (`set_tensor_address`,
`execute_async_v3`).

Has never run: written against the CUDA driver API and TensorRT 10 Python documentation, on
a machine without a GPU or TensorRT.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from service.model.plan_check import PlanMismatch
from service.spec import ModelSpec
from service.verification import Batch, Probs, Runner


class CudaError(RuntimeError):
    """A CUDA driver call failed."""


class CudaDriver:
    """The few driver calls a plan check needs, on device 0's primary context."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaError(f"no CUDA driver (libcuda.so.1): {exc}") from exc
        lib, ptr, size = self.lib, ctypes.c_uint64, ctypes.c_size_t
        lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ptr), size]
        lib.cuMemFree_v2.argtypes = [ptr]
        lib.cuMemcpyHtoD_v2.argtypes = [ptr, ctypes.c_void_p, size]
        lib.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ptr, size]
        lib.cuStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
        lib.cuStreamSynchronize.argtypes = [ctypes.c_void_p]
        lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        lib.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
        self._call("cuInit", 0)
        device = ctypes.c_int()
        self._call("cuDeviceGet", ctypes.byref(device), 0)
        context = ctypes.c_void_p()
        self._call("cuDevicePrimaryCtxRetain", ctypes.byref(context), device.value)
        self._call("cuCtxSetCurrent", context)
        stream = ctypes.c_void_p()
        # Flags 0: a blocking stream, ordered after the synchronous copies below.
        self._call("cuStreamCreate", ctypes.byref(stream), 0)
        self.stream = stream.value or 0

    def _call(self, name: str, *args: Any) -> None:
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise CudaError(f"{name} failed with CUDA error {status}")

    def alloc(self, nbytes: int) -> int:
        pointer = ctypes.c_uint64()
        self._call("cuMemAlloc_v2", ctypes.byref(pointer), nbytes)
        return pointer.value

    def free(self, pointer: int) -> None:
        self._call("cuMemFree_v2", pointer)

    def to_device(self, pointer: int, array: np.ndarray[Any, Any]) -> None:
        self._call("cuMemcpyHtoD_v2", pointer, array.ctypes.data, array.nbytes)

    def to_host(self, array: np.ndarray[Any, Any], pointer: int) -> None:
        self._call("cuMemcpyDtoH_v2", array.ctypes.data, pointer, array.nbytes)

    def synchronize(self) -> None:
        self._call("cuStreamSynchronize", self.stream)


def open_plan(trt: Any, plan_path: Path, spec: ModelSpec) -> Runner:
    """Deserialise `plan_path` and return a function that runs a uint8 batch through it.

    Raises PlanMismatch for a plan TensorRT cannot load, or whose tensors or batch profile
    differ from `spec` (Triton would refuse it, or fail at the largest batch).
    """
    cuda = CudaDriver()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise PlanMismatch(f"TensorRT {trt.__version__} cannot deserialise {plan_path.name}")
    _check_engine(trt, engine, spec)
    context = engine.create_execution_context()

    # `alive` holds the runtime and engine for as long as the context runs on them.
    def run(batch: Batch, alive: object = (runtime, engine)) -> Probs:
        images = np.ascontiguousarray(batch, dtype=np.uint8)
        probs = np.empty((len(images), spec.num_classes), dtype=np.float32)
        d_images, d_probs = cuda.alloc(images.nbytes), cuda.alloc(probs.nbytes)
        try:
            cuda.to_device(d_images, images)
            context.set_input_shape(spec.input_name, tuple(images.shape))
            context.set_tensor_address(spec.input_name, d_images)
            context.set_tensor_address(spec.output_name, d_probs)
            if not context.execute_async_v3(cuda.stream):
                raise PlanMismatch(f"TensorRT refused to run a batch of {len(images)}")
            cuda.synchronize()
            cuda.to_host(probs, d_probs)
        finally:
            cuda.free(d_images)
            cuda.free(d_probs)
        return probs

    return run


def _check_engine(trt: Any, engine: Any, spec: ModelSpec) -> None:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    if sorted(names) != sorted([spec.input_name, spec.output_name]):
        raise PlanMismatch(f"plan tensors {names}, the model spec says "
                           f"{spec.input_name} -> {spec.output_name}")
    dtypes = {name: engine.get_tensor_dtype(name) for name in names}
    if dtypes[spec.input_name] != trt.uint8 or dtypes[spec.output_name] != trt.float32:
        raise PlanMismatch(f"plan tensor types {dtypes}: expected uint8 in, float32 out")
    low, _, high = engine.get_tensor_profile_shape(spec.input_name, 0)
    if low[0] > 1 or high[0] < spec.max_batch_size:
        raise PlanMismatch(
            f"plan profile covers batch {low[0]}..{high[0]}, the config serves "
            f"1..{spec.max_batch_size}"
        )
