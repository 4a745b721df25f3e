"""A stand-in for the ``tensorrt`` Python package (TensorRT 10.3), for machines without an NVIDIA GPU.

Only the API edgedeploy uses, with the real names and call signatures (TensorRT v10.3.0 Python
bindings: python/src/infer/pyCore.cpp, pyGraph.cpp, parsers/pyOnnx.cpp): ``Logger``, ``Builder``
(``create_network``, ``create_builder_config``, ``build_serialized_network``), ``IBuilderConfig``
(``set_flag``, ``set_memory_pool_limit``, ``builder_optimization_level``, ``create_timing_cache``,
``set_timing_cache``, ``get_timing_cache``), ``OnnxParser`` (``parse_from_file``, ``num_errors``,
``get_error``), layers (``name``, ``precision``, ``set_output_type``, ...), ``Runtime``
(``deserialize_cuda_engine``), engines (``num_io_tensors``, ``get_tensor_*``,
``create_execution_context``) and contexts (``set_tensor_address``, ``execute_async_v3``).

Everything the tests want to check is recorded in ``LOG``. The "parser" makes one layer per named
non-Constant ONNX node (named after the node, as onnx-tensorrt does) and, like the real parser, extra
``<node>_<n>`` layers for some ops: Softmax gets an INT32 shape-helper layer first (so it has the node's
own name, with INT32 precision and a shape-tensor input), LayerNormalization a float one. A serialized "engine" is a real plan header (tag, version bytes 24..27) plus JSON, and ``Runtime``
loads it only in the exact TensorRT version that wrote it (all four version bytes), as the real runtime does, unless
it was built ``VERSION_COMPATIBLE`` (see ``Runtime``); the
execution context computes ``score`` = mean of the image and ``anomaly_map`` = 16x16 mean pooling of
the channel mean, reading and writing ``DEVICE_MEMORY`` (the fake CUDA memory of the tests).
"""

from __future__ import annotations

import enum
import json

import numpy as np

__version__ = "10.3.0.30"

LOG: dict = {}
DEVICE_MEMORY: dict[int, np.ndarray] = {}
PLAN_TAG = 0x74727466


def reset(version: str = "10.3.0.30") -> None:
    global __version__
    __version__ = version
    LOG.clear()
    LOG.update({"configs": [], "parsed": [], "built": [], "deserialized": 0, "executions": 0})
    DEVICE_MEMORY.clear()


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


float32, float16, int8, int32, int64 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32, DataType.INT64
uint8 = DataType.UINT8
bool = DataType.BOOL  # noqa: A001 - trt.bool; nothing in this module calls the builtin bool()

_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}


class LayerType(enum.Enum):
    CONVOLUTION = 0
    CONSTANT = 10
    SOFTMAX = 12
    NORMALIZATION = 49


def nptype(trt_type):
    return _NP[trt_type]


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity=WARNING):
        self.min_severity = min_severity


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7
    SAFETY_SCOPE = 8
    OBEY_PRECISION_CONSTRAINTS = 9
    PREFER_PRECISION_CONSTRAINTS = 10
    VERSION_COMPATIBLE = 13
    EXCLUDE_LEAN_RUNTIME = 14


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_SHARED_MEMORY = 4


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class IHostMemory:
    def __init__(self, data: bytes):
        self._data = data

    def __bytes__(self):
        return self._data

    @property
    def nbytes(self):
        return len(self._data)


class ITensor:
    def __init__(self, name, dtype=DataType.FLOAT, is_shape_tensor=False):
        self.name, self.dtype, self.is_shape_tensor = name, dtype, is_shape_tensor


class ILayer:
    def __init__(self, name, inputs, outputs, precision=DataType.FLOAT, layer_type=LayerType.CONVOLUTION):
        self.name, self.type = name, layer_type
        self._inputs, self._outputs = inputs, outputs
        self._precision = precision  # integer layers report an integer precision (NVIDIA/TensorRT#3177)
        self.precision_is_set = False
        self.output_types: dict[int, DataType] = {}

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, value):
        self._precision, self.precision_is_set = value, True

    @property
    def num_inputs(self):
        return len(self._inputs)

    @property
    def num_outputs(self):
        return len(self._outputs)

    def get_input(self, index):
        return self._inputs[index]

    def get_output(self, index):
        return self._outputs[index]

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


class INetworkDefinition:
    def __init__(self, flags):
        self.flags = flags
        self.layers: list[ILayer] = []
        self.inputs: list[tuple] = []
        self.outputs: list[tuple] = []

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, index):
        return self.layers[index]


class ParserError:
    def __init__(self, desc, node_name=""):
        self._desc, self._node = desc, node_name

    def desc(self):
        return self._desc

    def node_name(self):
        return self._node

    def __str__(self):
        return f"In node {self._node}: {self._desc}"


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.logger = network, logger
        self._errors: list[ParserError] = []

    @property
    def num_errors(self):
        return len(self._errors)

    def get_error(self, index):
        return self._errors[index]

    def parse_from_file(self, model):
        import onnx

        try:
            proto = onnx.load(model)
        except Exception as exc:  # noqa: BLE001
            self._errors.append(ParserError(f"cannot read model: {type(exc).__name__}"))
            return False
        names: set[str] = set()
        counter = [0]

        def unique(base):  # onnx-tensorrt generateUniqueName: base, else base_<global counter>
            candidate = base
            while candidate in names:
                candidate = f"{base}_{counter[0]}"
                counter[0] += 1
            names.add(candidate)
            return candidate

        for node in proto.graph.node:
            if node.op_type == "Unsupported":
                self._errors.append(ParserError("No importer registered for op: Unsupported", node.name))
                return False
            if node.op_type == "Constant" or not node.name:
                continue
            if node.op_type == "Softmax":  # a shape helper first, then the softmax itself
                self.network.layers.append(ILayer(unique(node.name), [ITensor("shape", DataType.INT32, True)],
                                                  [ITensor("shape_out", DataType.INT32, True)], DataType.INT32))
            self.network.layers.append(ILayer(unique(node.name), [ITensor("x")], [ITensor(o) for o in node.output]))
            if node.op_type == "LayerNormalization":
                self.network.layers.append(ILayer(unique(node.name), [ITensor("x")], [ITensor("y")]))
        dims = lambda v: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)  # noqa: E731
        self.network.inputs = [(v.name, dims(v)) for v in proto.graph.input]
        self.network.outputs = [(v.name, dims(v)) for v in proto.graph.output]
        LOG["parsed"].append(model)
        return True


class ITimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self):
        return IHostMemory(self.data + b"+timed")

    def combine(self, input_cache, ignore_mismatch):
        self.data += input_cache.data
        return True


class IBuilderConfig:
    def __init__(self):
        self.flags: set[BuilderFlag] = set()
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.builder_optimization_level = 3
        self.timing_cache: ITimingCache | None = None
        self.created_caches: list[bytes] = []
        LOG["configs"].append(self)

    def set_flag(self, flag):
        self.flags.add(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool, pool_size):
        self.pool_limits[pool] = pool_size

    def get_memory_pool_limit(self, pool):
        return self.pool_limits.get(pool, 0)

    # TensorRT 10.3: create_timing_cache may return None; bytes that are no timing cache make the binding raise
    # TypeError; set_timing_cache returns False for a cache of another device or version. A cache this fake
    # serialised ends in b"+timed"; MISMATCH marks one "from another GPU".
    MISMATCH = b"other-gpu"
    refuse_creation = False

    def create_timing_cache(self, serialized_timing_cache):
        data = bytes(serialized_timing_cache)
        self.created_caches.append(data)
        if self.refuse_creation:
            return None
        if data and not data.endswith(b"+timed") and not data.startswith(self.MISMATCH):
            raise TypeError("create_timing_cache(): incompatible function arguments")
        return ITimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.data.startswith(self.MISMATCH) and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


def _plan(payload: dict) -> bytes:
    major, minor, patch, build = (int(p) for p in (__version__.split(".") + ["0"] * 4)[:4])
    header = PLAN_TAG.to_bytes(4, "little") + (0).to_bytes(4, "little") + bytes(16) + bytes([major, minor, patch, build])
    return header + json.dumps(payload).encode()


class Builder:
    fail_build = False  # tests set this to make build_serialized_network return None

    def __init__(self, logger):
        self.logger = logger
        self.platform_has_fast_fp16 = True

    def create_network(self, flags=0):
        return INetworkDefinition(flags)

    def create_builder_config(self):
        return IBuilderConfig()

    def build_serialized_network(self, network, config):
        LOG["built"].append({"network": network, "config": config})
        if Builder.fail_build:
            return None
        fp32 = [layer.name for layer in network.layers if layer.precision_is_set and layer.precision == DataType.FLOAT]
        payload = {"inputs": network.inputs, "outputs": network.outputs, "fp32_layers": fp32,
                   "fp16": BuilderFlag.FP16 in config.flags,
                   "version_compatible": BuilderFlag.VERSION_COMPATIBLE in config.flags,
                   "lean_runtime": BuilderFlag.VERSION_COMPATIBLE in config.flags
                   and BuilderFlag.EXCLUDE_LEAN_RUNTIME not in config.flags}
        return IHostMemory(_plan(payload))


class IExecutionContext:
    def __init__(self, engine):
        self.engine = engine
        self.addresses: dict[str, int] = {}

    def set_tensor_address(self, name, memory):
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle):
        LOG["executions"] += 1
        (in_name, shape), = self.engine.payload["inputs"]
        image = DEVICE_MEMORY[self.addresses[in_name]].view(np.float32).reshape(shape)
        gray = image[0].mean(axis=0)
        s = shape[-1] // 16
        results = {"score": np.array([image.mean()], dtype=np.float32),
                   "anomaly_map": gray.reshape(s, 16, s, 16).mean(axis=(1, 3)).reshape(1, 1, s, s).astype(np.float32)}
        for name, _ in self.engine.payload["outputs"]:
            DEVICE_MEMORY[self.addresses[name]][...] = results[name].view(np.uint8).reshape(-1)
        return True


class ICudaEngine:
    def __init__(self, payload):
        self.payload = payload
        self._io = [(n, tuple(s), TensorIOMode.INPUT) for n, s in payload["inputs"]] + \
                   [(n, tuple(s), TensorIOMode.OUTPUT) for n, s in payload["outputs"]]

    @property
    def num_io_tensors(self):
        return len(self._io)

    def get_tensor_name(self, index):
        return self._io[index][0]

    def _find(self, name):
        return next(t for t in self._io if t[0] == name)

    def get_tensor_mode(self, name):
        return self._find(name)[2]

    def get_tensor_shape(self, name):
        return self._find(name)[1]

    def get_tensor_dtype(self, name):
        return DataType.FLOAT

    def create_execution_context(self):
        return IExecutionContext(self)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in (text.split(".") + ["0"] * 4)[:4])


class Runtime:
    """Deserialises a plan as TensorRT does: only in the exact version that wrote it (major.minor.patch.build, the
    header's bytes 24..27), except a version-compatible plan that carries its lean runtime, which loads in the same or
    a later version of its major version, and only when ``engine_host_code_allowed`` (TensorRT 10.3 developer guide,
    "Version Compatibility"; ``IRuntime.engine_host_code_allowed`` in python/src/infer/pyCore.cpp)."""

    def __init__(self, logger):
        self.logger = logger
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, serialized_engine):
        LOG["deserialized"] += 1
        data = bytes(serialized_engine)
        if len(data) < 28 or int.from_bytes(data[:4], "little") != PLAN_TAG:
            return None
        try:
            payload = json.loads(data[28:])
        except ValueError:
            return None
        built, here = tuple(data[24:28]), _version(__version__)
        lean = isinstance(payload, dict) and payload.get("version_compatible") and payload.get("lean_runtime")
        if lean and not self.engine_host_code_allowed:
            return None  # the real runtime refuses to run the plan's host code unless told to trust it
        if built != here and not (lean and built[0] == here[0] and here > built):
            return None  # the real runtime refuses plans of another version (with an error log)
        return ICudaEngine(payload)


reset()
