"""The TensorRT Python API names edgedeploy uses: each one is bound in TensorRT 10.3, and the fake has each.

The list below was read from the Python bindings of NVIDIA/TensorRT tag v10.3.0 (commit c5b9de37f7ef;
the same files on branch release/10.3 at 5b990f0a739d): python/src/infer/pyCore.cpp, pyGraph.cpp,
pyFoundationalTypes.cpp, python/src/parsers/pyOnnx.cpp, and python/packaging/bindings_wheel/tensorrt/__init__.py
(``nptype``, ``__version__``). The names the code uses are found, not listed by hand: ``trt.X`` / ``trt.X.Y`` in
the source of the modules that import tensorrt, and every attribute edgedeploy's code touches on a TensorRT
object while the fake builds an engine (with FP32 layers and a timing cache) and scores with it.
"""

from __future__ import annotations

import ast
import enum
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgedeploy.cli import main

# Python name of the module or class -> names bound on it, with the binding file.
TENSORRT_10_3 = {
    "tensorrt": {  # pyCore.cpp (classes, enums), pyGraph.cpp (LayerType), pyOnnx.cpp (OnnxParser),
        # pyFoundationalTypes.cpp (DataType and the float32.. module attributes), packaging __init__.py
        "__version__", "nptype", "Logger", "Builder", "Runtime", "OnnxParser", "BuilderFlag", "MemoryPoolType",
        "TensorIOMode", "LayerType", "DataType", "float32", "float16", "int8", "int32", "int64", "bool", "uint8"},
    "Logger": {"WARNING", "ERROR"},  # pyCore.cpp: ILogger.Severity, export_values() onto ILogger; Logger derives
    "BuilderFlag": {"FP16", "OBEY_PRECISION_CONSTRAINTS"},  # pyCore.cpp
    "MemoryPoolType": {"WORKSPACE"},  # pyCore.cpp
    "TensorIOMode": {"INPUT", "OUTPUT"},  # pyCore.cpp
    "LayerType": {"CONSTANT"},  # pyGraph.cpp
    "Builder": {"create_network", "create_builder_config", "build_serialized_network"},  # pyCore.cpp
    "IBuilderConfig": {"set_flag", "set_memory_pool_limit", "builder_optimization_level", "create_timing_cache",
                       "set_timing_cache", "get_timing_cache"},  # pyCore.cpp
    "ITimingCache": {"serialize"},  # pyCore.cpp
    "Runtime": {"deserialize_cuda_engine"},  # pyCore.cpp
    "ICudaEngine": {"num_io_tensors", "get_tensor_name", "get_tensor_shape", "get_tensor_dtype", "get_tensor_mode",
                    "create_execution_context"},  # pyCore.cpp
    "IExecutionContext": {"set_tensor_address", "execute_async_v3"},  # pyCore.cpp
    "INetworkDefinition": {"num_layers", "get_layer"},  # pyGraph.cpp
    "ILayer": {"name", "type", "precision", "num_inputs", "num_outputs", "get_input", "get_output",
               "set_output_type"},  # pyGraph.cpp
    "ITensor": {"name", "dtype", "is_shape_tensor"},  # pyGraph.cpp
    "OnnxParser": {"parse_from_file", "num_errors", "get_error"},  # pyOnnx.cpp
}
SOURCES = ("edgedeploy/runtime/tensorrt.py", "edgedeploy/runtime/engine_check.py", "edgedeploy/targets/tensorrt/engine.py")
ROOT = Path(__file__).resolve().parents[2]


def _module_chains(path: Path) -> set[tuple[str, str]]:
    """(owner, name) of every ``trt.X`` and ``trt.X.Y`` in a source file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trt":
            found.add(("tensorrt", node.attr))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "trt":
            found.add((node.value.attr, node.attr))
    return found


def _fake_classes(trt) -> dict[str, type]:
    return {name: getattr(trt, name) for name in TENSORRT_10_3 if name != "tensorrt" and isinstance(getattr(trt, name), type)
            and not issubclass(getattr(trt, name), enum.Enum)}


@pytest.fixture
def touched(fake_trt, monkeypatch):
    """(class, name) of each attribute edgedeploy's code reads or calls on a fake TensorRT object."""
    seen: set[tuple[str, str]] = set()
    classes = {**_fake_classes(fake_trt), "IHostMemory": fake_trt.IHostMemory, "ParserError": fake_trt.ParserError}

    def recorder(cls_name):
        def getattribute(self, name):
            if not name.startswith("_") and sys._getframe(1).f_globals.get("__name__", "").startswith("edgedeploy"):
                seen.add((cls_name, name))
            return object.__getattribute__(self, name)
        return getattribute

    for name, cls in classes.items():
        monkeypatch.setattr(cls, "__getattribute__", recorder(name))
    return seen


def test_every_name_the_code_uses_is_bound_in_tensorrt_10_3(touched, jetson_bundle, mvtec_root, tmp_path):
    keep = "/stages.1/blocks/blocks.0/attn/Softmax"
    assert CliRunner().invoke(main, ["engine", "build", str(jetson_bundle), "--keep-fp32", keep]).exit_code == 0
    assert CliRunner().invoke(main, ["engine", "build", str(jetson_bundle)]).exit_code == 0  # with the saved cache
    result = CliRunner().invoke(main, ["score", "--model", str(jetson_bundle / "model.engine"), "--bench", "mvtec",
                                       "--data-root", str(mvtec_root), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    used = set(touched) | {pair for source in SOURCES for pair in _module_chains(ROOT / source)}
    assert ("ILayer", "set_output_type") in used and ("IExecutionContext", "execute_async_v3") in used
    unknown = {(owner, name) for owner, name in used if name not in TENSORRT_10_3.get(owner, set())}
    assert not unknown, f"not in TensorRT 10.3's Python bindings as listed here: {sorted(unknown)}"


def test_the_fake_has_every_listed_name(fake_trt, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])),
              tmp_path / "m.onnx")
    builder = fake_trt.Builder(fake_trt.Logger())
    network = builder.create_network(0)
    parser = fake_trt.OnnxParser(network, None)
    assert parser.parse_from_file(str(tmp_path / "m.onnx"))
    config = builder.create_builder_config()
    engine = fake_trt.Runtime(None).deserialize_cuda_engine(bytes(builder.build_serialized_network(network, config)))
    instances = {"tensorrt": fake_trt, "Builder": builder, "INetworkDefinition": network, "OnnxParser": parser,
                 "IBuilderConfig": config, "ITimingCache": config.create_timing_cache(b""), "ICudaEngine": engine,
                 "IExecutionContext": engine.create_execution_context(), "ILayer": network.get_layer(0),
                 "ITensor": network.get_layer(0).get_output(0)}
    missing = [f"{owner}.{name}" for owner, names in TENSORRT_10_3.items() for name in sorted(names)
               if not hasattr(instances[owner] if owner in instances else getattr(fake_trt, owner), name)]
    assert not missing, f"the fake tensorrt lacks {missing}"


def test_the_check_catches_a_name_tensorrt_does_not_bind(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import tensorrt as trt\nflag = trt.BuilderFlag.STRICT_TYPES\n")  # removed before TensorRT 10
    used = _module_chains(source)
    assert ("BuilderFlag", "STRICT_TYPES") in used and "STRICT_TYPES" not in TENSORRT_10_3["BuilderFlag"]
