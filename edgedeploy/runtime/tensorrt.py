"""Running a TensorRT engine on the Jetson: TensorRT, numpy and Polygraphy's CUDA wrapper; no PyTorch.

Device buffers come from ``polygraphy.cuda`` (a ctypes wrapper over libcudart: ``wrapper()``'s
``malloc``/``memcpy``/``free`` and ``Stream``), addressed by raw pointers. Polygraphy's ``TrtRunner``
is not used because its array helpers import PyTorch whenever it is installed. The engine runs with
the TensorRT 10 tensor API: ``set_tensor_address`` and ``execute_async_v3``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgedeploy import __version__
from edgedeploy.core.errors import ToolFailedError, ToolUnavailableError
from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.modelcard import card_digest
from edgedeploy.runtime.base import ModelFileError, Runner, resolve_card
from edgedeploy.runtime.bundle import bundle_of, require_runtime
from edgedeploy.runtime.engine_check import (EngineIncompatibleError, check_engine, current_gpu, excludes_lean_runtime,
                                             import_tensorrt, version_compatible)


class DeviceRunError(ToolFailedError):
    """The engine loaded but failed while running (a CUDA or TensorRT execution error)."""


class CudaMemory:
    """Device buffers and one stream through Polygraphy's libcudart wrapper."""

    def __init__(self):
        from polygraphy import cuda

        self._cuda = cuda
        self._api = cuda.wrapper()
        self._stream = cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return self._stream.ptr

    def alloc(self, nbytes: int) -> int:
        return self._api.malloc(nbytes)

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self._api.memcpy(ptr, host.ctypes.data, host.nbytes, self._cuda.MemcpyKind.HostToDevice, self.stream_handle)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self._api.memcpy(host.ctypes.data, ptr, host.nbytes, self._cuda.MemcpyKind.DeviceToHost, self.stream_handle)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def free(self, ptr: int) -> None:
        self._api.free(ptr)

    def close(self) -> None:
        self._stream.free()


def _cuda_memory() -> CudaMemory:
    return CudaMemory()


class TensorRTRunner(Runner):
    """Loads ``model.engine`` after checking it fits this GPU and TensorRT, and runs it image by image.

    Made cheaply (the path, the card fields, the bundle's manifest; the file must exist); ``activate`` checks the
    engine against this GPU and TensorRT, deserialises it and makes the execution context and device buffers;
    ``deactivate`` frees them all, and a later ``activate`` loads them again. ``identity`` (the score cache's key)
    holds the engine file's sha256 and the card's digest, so two engines never share cached scores.

    Each image is timed around ``execute_async_v3`` and the stream synchronisation alone: the host-to-device
    copy before and the device-to-host copy after are left out.
    """

    runner = "tensorrt"
    label = "TensorRT engine"
    timed = "TensorRT execute_async_v3 + stream synchronize"
    on_target = True
    batch_size = 16

    def __init__(self, engine_path: Path, card_fields: dict | None = None):
        super().__init__()
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise ModelFileError(f"engine file {self.path} does not exist: pass a bundle's model.engine (build it on "
                                 "the Jetson with `edgedeploy engine build <bundle>`)")
        self.card_fields = card_fields
        self.bundle_dir, self.manifest = bundle_of(self.path)
        if self.manifest is not None:
            require_runtime(self.bundle_dir, self.manifest, "tensorrt", "a TensorRT engine")
        self.card = None
        self.engine_meta: dict = {}
        self.extra_meta: dict = {}
        self.graph_sha256: str | None = None
        self._engine_sha256: str | None = None
        self._input_size: int | None = None
        self._trt = self._runtime = self._engine = self._context = self._mem = None
        self._io: dict = {}
        self._buffers: dict[str, tuple[int, np.ndarray]] = {}

    @property
    def engine_sha256(self) -> str:
        if self._engine_sha256 is None:
            self._engine_sha256 = sha256_file(self.path)
        return self._engine_sha256

    @property
    def input_size(self) -> int:
        if self._input_size is None:
            self.activate()
        return self._input_size

    def identity(self) -> dict:
        # the engine's bytes hold the compiled graph, weights and kernels: its hash decides the scores, with the card
        if self.card is None:  # the card comes from the manifest, or from the engine's I/O names: load it once
            self.activate()
        return {"runner": self.runner, "engine": self.engine_sha256, "edgedeploy": __version__,
                "tensorrt": self.extra_meta.get("tensorrt", ""),
                "compute_capability": self.extra_meta.get("compute_capability", ""), "card": card_digest(self.card)}

    def meta(self) -> dict[str, str]:
        if not self.extra_meta:
            self.activate()
        return {"model_sha256": self.graph_sha256 or "unknown", "runner": self.runner,
                **{k: str(v) for k, v in self.extra_meta.items()}}

    def _activate(self) -> None:
        trt = import_tensorrt(self.bundle_dir, instead=f"run {self.path.name} on the Jetson it was built for, or score "
                                                       "model.onnx here with ONNX Runtime (--model model.onnx)")
        gpu = current_gpu()
        if gpu is None:
            raise ToolUnavailableError("no CUDA GPU is visible here: run the engine on the Jetson, or score model.onnx "
                                       "with ONNX Runtime (`edgedeploy score --model model.onnx ...`)")
        self.engine_meta = check_engine(self.path, str(trt.__version__), gpu)
        self._engine_sha256 = self.engine_meta.get("engine_sha256") or None
        try:
            self._trt = trt
            self._engine = self._deserialize(trt)
            self._io = self._tensors(trt)
            card = resolve_card(self.card, self.manifest, [(n, list(s)) for n, s, _ in self._io["inputs"]],
                                [(n, list(s)) for n, s, _ in self._io["outputs"]], str(self.path), self.card_fields)
            self._context = self._engine.create_execution_context()
            self._mem = _cuda_memory()
            for name, shape, dtype in self._io["inputs"] + self._io["outputs"]:
                host = np.empty(shape, dtype=dtype)
                ptr = self._mem.alloc(max(host.nbytes, 1))
                self._buffers[name] = (ptr, host)
                self._context.set_tensor_address(name, ptr)
        except BaseException:
            self._deactivate()
            raise
        self.card, self._input_size = card, card.input_size
        self.extra_meta = {"engine_sha256": self.engine_meta.get("engine_sha256") or self.engine_sha256,
                           "tensorrt": str(trt.__version__), "gpu": gpu["name"],
                           "compute_capability": gpu["compute_capability"]}
        self.graph_sha256 = self.engine_meta.get("onnx_sha256")

    def _deserialize(self, trt):
        logger = trt.Logger(trt.Logger.ERROR)
        runtime = trt.Runtime(logger)
        if version_compatible(self.engine_meta) and not excludes_lean_runtime(self.engine_meta):
            # a version-compatible plan carries the lean runtime (host code) that deserialises and runs it; TensorRT
            # runs it only when told to trust the plan. This one is the bundle's own engine, its hash checked
            # against the sidecar that says how it was built (see engine_check for the documentation).
            runtime.engine_host_code_allowed = True
        try:
            engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        except Exception as exc:  # some builds raise instead of returning None
            engine, detail = None, f" ({type(exc).__name__})"
        else:
            detail = ""
        if engine is None:
            raise EngineIncompatibleError(
                f"TensorRT {trt.__version__} could not deserialize {self.path}{detail}: the file is corrupt or was built "
                "for another GPU or TensorRT version; rebuild it on this device (`edgedeploy engine build <bundle>`)")
        self._runtime = runtime  # the runtime must outlive the engine
        return engine

    def _tensors(self, trt) -> dict:
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            (inputs if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append((name, shape, dtype))
        if len(inputs) != 1 or len(inputs[0][1]) != 4 or inputs[0][1][0] != 1 or inputs[0][1][1] != 3 \
                or any(d < 1 for d in inputs[0][1]):
            raise EngineIncompatibleError(f"{self.path} has inputs {inputs}: expected one static 1x3xSxS image input "
                                          "(an engine built from a bundle's model.onnx)")
        return {"inputs": inputs, "outputs": outputs}

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run each image through the engine; each output stacked over the images, split into scores and maps."""
        (in_name, _, _), = self._io["inputs"]
        collected: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in self._io["outputs"]}
        for image in images:
            ptr, host = self._buffers[in_name]
            host[...] = self.card.prepare(image[None]).astype(host.dtype, copy=False)
            try:
                self._mem.to_device(ptr, host)
                self._mem.synchronize()
                start = time.perf_counter()
                if not self._context.execute_async_v3(self._mem.stream_handle):
                    raise DeviceRunError(f"TensorRT failed to run {self.path.name} (execute_async_v3 returned False)")
                self._mem.synchronize()
                self.record_inference(time.perf_counter() - start)
                for name in collected:
                    out_ptr, out_host = self._buffers[name]
                    self._mem.to_host(out_host, out_ptr)
                self._mem.synchronize()
            except DeviceRunError:
                raise
            except Exception as exc:  # Polygraphy raises PolygraphyException on CUDA errors
                raise DeviceRunError(f"CUDA error while running {self.path.name}: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            for name in collected:
                collected[name].append(self._buffers[name][1].astype(np.float32).copy())
        return self.card.read_outputs({name: np.concatenate(arrays) for name, arrays in collected.items()}, len(images))

    def _deactivate(self) -> None:
        """Free the device buffers and the stream, then drop the context, engine and runtime (in that order: each
        must outlive what it made). The card, identity and provenance stay: a later ``activate`` loads it all again."""
        mem, self._mem = self._mem, None
        buffers, self._buffers = self._buffers, {}
        try:
            if mem is not None:
                for ptr, _ in buffers.values():
                    mem.free(ptr)
                mem.close()
        finally:
            self._context = None
            self._engine = None
            self._runtime = None
            self._trt = None
