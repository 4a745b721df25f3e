import numpy as np

import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedeploy.host.audit import audit_model, audit_onnx
from edgedeploy.core.errors import OnnxModelError
from edgedeploy.core.profiles import load_profile


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _errors(report, rule):
    return [f for f in report.errors if f.rule == rule]


@pytest.fixture(scope="module")
def rb5():
    return load_profile("rb5-gen2")


@pytest.fixture(scope="module")
def jetson():
    return load_profile("jetson-orin-nano")


def test_nonzero_is_an_error_on_rb5(rb5):
    model = _model([helper.make_node("NonZero", ["x"], ["idx"], name="find_defects")],
                   [_vi("x", [1, 4])], [_vi("idx", [2, None], TensorProto.INT64)])
    report = audit_model(model, rb5)
    found = _errors(report, "op-unsupported")
    assert found and found[0].node == "find_defects" and found[0].op == "NonZero"
    assert "mask" in found[0].fix and not report.passed


def test_rank6_transpose(rb5, jetson):
    model = _model([helper.make_node("Transpose", ["x"], ["y"], name="window_partition", perm=[0, 1, 3, 2, 4, 5])],
                   [_vi("x", [1, 2, 3, 4, 5, 6])], [_vi("y", [1, 2, 4, 3, 5, 6])])
    found = _errors(audit_model(model, rb5), "rank")
    assert found and {f.node for f in found} >= {"window_partition"}
    assert "limit of 5" in found[0].message
    assert not _errors(audit_model(model, jetson), "rank")


def test_int64_initializer_on_data_path(rb5):
    weights = numpy_helper.from_array(np.arange(4, dtype=np.int64).reshape(1, 4), "offsets")
    shape = numpy_helper.from_array(np.array([4], dtype=np.int64), "flat_shape")
    model = _model([helper.make_node("Add", ["x", "offsets"], ["y"], name="add_offsets"),
                    helper.make_node("Reshape", ["y", "flat_shape"], ["z"], name="flatten")],
                   [_vi("x", [1, 4], TensorProto.INT32)], [_vi("z", [4], TensorProto.INT32)], [weights, shape])
    found = _errors(audit_model(model, rb5), "dtype")
    assert [f.node for f in found] == ["add_offsets"]
    assert "INT64" in found[0].message and "INT32" in found[0].fix


def test_dynamic_batch_dim(rb5):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 8, 8])
    found = _errors(audit_model(_model([helper.make_node("Relu", ["image"], ["out"], name="act")], [x], [y]), rb5),
                    "dynamic-shape")
    assert found and "batch" in found[0].message


def test_opset_double_custom_domain_denied(rb5):
    double = numpy_helper.from_array(np.ones((1, 4)), "scale")
    nodes = [helper.make_node("Mul", ["x", "scale"], ["y"], name="scale_up"),
             helper.make_node("Resize", ["y", "", "", "sizes"], ["z"], name="upsample"),
             helper.make_node("MyOp", ["z"], ["w"], name="plugin", domain="com.example")]
    sizes = numpy_helper.from_array(np.array([1, 8], dtype=np.int64), "sizes")
    model = _model(nodes, [_vi("x", [1, 4], TensorProto.DOUBLE)], [_vi("w", [1, 8], TensorProto.DOUBLE)],
                   [double, sizes], opset=11)
    report = audit_model(model, rb5)
    rules = {f.rule for f in report.errors}
    assert {"opset", "dtype", "op-denied", "custom-op"} <= rules
    assert any(f.node == "upsample" and "Resize" in f.message for f in report.errors)


def test_fp16_patterns_are_warnings(jetson):
    exponent = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["var"], name="variance", keepdims=1)]
    model = _model(nodes, [_vi("x", [1, 16])], [_vi("var", [1, 1])], [exponent])
    report = audit_model(model, jetson)
    assert report.passed
    chain = [f for f in report.warnings if f.op == "Pow->ReduceMean"]
    assert chain and chain[0].node == "variance" and "--keep-fp32" in chain[0].fix


def test_memory_budget(tmp_path):
    import yaml

    from edgedeploy.core.profiles import profiles_dir

    data = yaml.safe_load((profiles_dir() / "rb5-gen2.yaml").read_text())
    data["name"], data["device"]["memory_gb"] = "tiny-mcu", 0.001
    (tmp_path / "tiny-mcu.yaml").write_text(yaml.safe_dump(data))
    tiny = load_profile(tmp_path / "tiny-mcu.yaml")
    weights = numpy_helper.from_array(np.zeros((256, 1024), dtype=np.float32), "weights")
    model = _model([helper.make_node("Add", ["x", "weights"], ["y"], name="add_weights")],
                   [_vi("x", [256, 1024])], [_vi("y", [256, 1024])], [weights])
    found = _errors(audit_model(model, tiny), "memory")
    assert found and "MiB" in found[0].message
    assert not _errors(audit_model(model, load_profile("rb5-gen2")), "memory")


def test_unparsable_file(tmp_path, rb5):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"definitely not protobuf" * 10)
    with pytest.raises(OnnxModelError, match="not a readable ONNX model"):
        audit_onnx(path, rb5)


def test_report_table_and_json(tmp_path, small_build):
    report = small_build.audit
    table = report.table()
    assert "audit PASS for rb5-gen2" in table and "fp16-risk" in table
    report.write(tmp_path / "audit.json")
    data = __import__("json").loads((tmp_path / "audit.json").read_text())
    assert data["passed"] and data["errors"] == 0 and data["stats"]["max_rank"] <= 5
    assert all({"severity", "rule", "node", "op", "message", "fix"} <= set(f) for f in data["findings"])


def test_plain_constants_carry_no_caveat(jetson):
    value = helper.make_node("Constant", [], ["c"], name="dense", value=numpy_helper.from_array(np.ones(4, np.float32)))
    text = helper.make_node("Constant", [], ["s"], name="text", value_strings=["a"])
    add = helper.make_node("Add", ["x", "c"], ["y"], name="add")
    model = _model([value, text, add], [_vi("x", [4])], [_vi("y", [4])])
    caveats = [f.node for f in audit_model(model, jetson).warnings if f.rule == "op-caveat"]
    assert "dense" not in caveats and "text" in caveats
