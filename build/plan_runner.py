"""Run a TensorRT plan on numpy batches: TensorRT's Python API for the engine, the CUDA runtime
(libcudart, through ctypes) for GPU memory, so NVIDIA's TensorRT container needs no extra package.

    with PlanRunner("engines/model_fp16.plan") as run:
        logits = run({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})   # (B, L)

Every input is cast to the dtype the engine declares and checked against its optimization
profile, so a batch outside the profile fails with the shapes named instead of a TensorRT error.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from build.tensorrt import PlanError

# where NVIDIA's containers and the pip wheel nvidia-cuda-runtime-cu12 keep the CUDA runtime
CUDART_NAMES = ("libcudart.so.12", "libcudart.so", "/usr/local/cuda/lib64/libcudart.so.12",
                "/usr/local/cuda/lib64/libcudart.so")
HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2        # cudaMemcpyKind


class CudaRuntime:
    """The few CUDA runtime calls a plan needs: device buffers, copies, one stream."""

    def __init__(self, names=CUDART_NAMES):
        self.lib, tried = None, []
        for name in names:
            try:
                self.lib = ctypes.CDLL(name)
                self.path = name
                break
            except OSError as e:
                tried.append(f"{name} ({str(e)[:80]})")
        if self.lib is None:
            raise PlanError("the CUDA runtime (libcudart) is not loadable here: tried " + "; ".join(tried))
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        for fn in ("cudaMalloc", "cudaFree", "cudaMemcpy", "cudaStreamCreate", "cudaStreamSynchronize",
                   "cudaStreamDestroy"):
            getattr(self.lib, fn).restype = ctypes.c_int

    def check(self, code: int, what: str) -> None:
        if code != 0:
            message = self.lib.cudaGetErrorString(code).decode(errors="replace")
            raise PlanError(f"{what} failed: CUDA error {code} ({message})")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(1, nbytes))), f"cudaMalloc({nbytes})")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.check(self.lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self.check(self.lib.cudaMemcpy(ctypes.c_void_p(ptr), array.ctypes.data_as(ctypes.c_void_p),
                                       ctypes.c_size_t(array.nbytes), HOST_TO_DEVICE), "cudaMemcpy to the GPU")

    def to_host(self, array: np.ndarray, ptr: int) -> np.ndarray:
        self.check(self.lib.cudaMemcpy(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(ptr),
                                       ctypes.c_size_t(array.nbytes), DEVICE_TO_HOST), "cudaMemcpy from the GPU")
        return array

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return s.value or 0

    def synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def destroy(self, stream: int) -> None:
        self.check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


class PlanRunner:
    """One plan, one execution context, one stream; call it with a dict of input arrays."""

    def __init__(self, plan: str | Path, cuda: CudaRuntime | None = None, output: str = "logits"):
        import tensorrt as trt

        self.trt, self.plan, self.output = trt, Path(plan), output
        self.cuda = cuda or CudaRuntime()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise PlanError(f"{self.plan}: TensorRT {trt.__version__} could not load it (a plan only loads in "
                            "the TensorRT version, and on the GPU family, that built it)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if output not in names or output in self.inputs:
            raise PlanError(f"{self.plan}: no output {output!r} (tensors: {names})")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()

    def profile(self, name: str) -> tuple:
        """(min, opt, max) shapes of profile 0 for an input."""
        return tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise PlanError(f"{self.plan}: inputs {missing} not given (have {sorted(feeds)})")
        buffers = []
        try:
            for name in self.inputs:
                array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
                low, _, high = self.profile(name)
                if any(not lo <= d <= hi for d, lo, hi in zip(array.shape, low, high)):
                    raise PlanError(f"{self.plan}: {name} of shape {array.shape} is outside the plan's profile "
                                    f"{low}..{high} (rebuild with --max-batch/--max-seq)")
                if not self.context.set_input_shape(name, array.shape):
                    raise PlanError(f"{self.plan}: TensorRT refused shape {array.shape} for {name}")
                buffers.append(self.cuda.malloc(array.nbytes))
                self.cuda.to_device(buffers[-1], array)
                self.context.set_tensor_address(name, buffers[-1])
            out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.dtypes[self.output])
            buffers.append(self.cuda.malloc(out.nbytes))
            self.context.set_tensor_address(self.output, buffers[-1])
            if not self.context.execute_async_v3(self.stream):
                raise PlanError(f"{self.plan}: TensorRT could not run the batch (see its log above)")
            self.cuda.synchronize(self.stream)
            return self.cuda.to_host(out, buffers[-1]).astype(np.float32)
        finally:
            for ptr in buffers:
                self.cuda.free(ptr)

    def close(self) -> None:
        if self.stream:
            self.cuda.destroy(self.stream)
            self.stream = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
