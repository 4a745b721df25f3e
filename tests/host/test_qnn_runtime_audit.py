"""The audit asks the QNN runtime (onnxruntime-qnn's HTP backend here), and the rb5-gen2 build writes its GELUs as
ONNX Gelu (opset 20) so that runtime takes the graph whole. Tests that need the runtime skip where it is missing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgedeploy.cli import main
from edgedeploy.core.hashing import sha256_file
from edgedeploy.core.profiles import load_profile
from edgedeploy.host import audit_runtime
from edgedeploy.host.audit import audit_model, audit_onnx

NEEDS_QNN = "onnxruntime-qnn is not importable here (it needs Python >= 3.11 and an x86_64/aarch64 Linux wheel)"


def _qnn():
    return pytest.importorskip("onnxruntime_qnn", reason=NEEDS_QNN)


@pytest.fixture(scope="module")
def rb5():
    return load_profile("rb5-gen2")


@pytest.fixture
def qnn_cache(tmp_path, monkeypatch):
    """A cache of the runtime's answers of this test's own."""
    monkeypatch.setenv("EDGEDEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "qnn-check"


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _gelu_graph(form: str) -> onnx.ModelProto:
    """x -> GELU -> Conv 1x1, with the GELU written as
    ``halved-away``: TinyViT's exported conv-stage GELU, x * (1 + erf(x / sqrt 2)), its 0.5 folded into the conv;
    ``whole``: x * (1 + erf(x / sqrt 2)) * 0.5;  ``times-two``: ``halved-away`` then * 2 (not a GELU at all);
    ``gelu``: one ONNX Gelu (opset 20)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 4, 1, 1)).astype(np.float32), "w")
    inits = [weight]
    if form == "gelu":
        nodes = [helper.make_node("Gelu", ["x"], ["g"], name="/act/Gelu")]
    else:
        inits += [_const("sqrt2", np.sqrt(np.float32(2))), _const("one", 1.0), _const("half", 0.5), _const("two", 2.0)]
        nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"], name="/act/Div"),
                 helper.make_node("Erf", ["d"], ["e"], name="/act/Erf"),
                 helper.make_node("Add", ["e", "one"], ["a"], name="/act/Add"),
                 helper.make_node("Mul", ["x", "a"], ["m"], name="/act/Mul")]
        last = {"halved-away": None, "whole": "half", "times-two": "two"}[form]
        nodes.append(helper.make_node("Mul", ["m", last], ["g"], name="/act/Mul_1") if last else
                     helper.make_node("Identity", ["m"], ["g"], name="/act/Identity"))
    nodes.append(helper.make_node("Conv", ["g", "w"], ["y"], name="/conv/Conv"))
    opset = 20 if form == "gelu" else 17
    return helper.make_model(helper.make_graph(nodes, "gelu", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", opset)])


def _save(model, path):
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _rules(report, severity="error"):
    return {(f.rule, f.node) for f in report.findings if f.severity == severity}


# ------------------------------------------------------------------------------------ the static rules


def test_erf_is_no_longer_in_the_rb5_op_list(rb5):
    assert "Erf" not in rb5.supported_ops and "Gelu" in rb5.supported_ops
    assert "Erf" in load_profile("jetson-orin-nano").supported_ops


def test_static_rules_for_the_three_erf_forms(rb5):
    halved_away = audit_model(_gelu_graph("halved-away"), rb5)
    assert ("op-unsupported", "/act/Erf") in _rules(halved_away)
    erf = next(f for f in halved_away.errors if f.node == "/act/Erf")
    assert "ONNX Gelu (opset 20)" in erf.fix

    whole = audit_model(_gelu_graph("whole"), rb5)  # the form QAIRT's converter and the QNN EP fuse into Gelu
    assert ("op-fused", "/act/Erf") in _rules(whole, "warning") and not any(f.op == "Erf" for f in whole.errors)

    times_two = audit_model(_gelu_graph("times-two"), rb5)  # the QNN EP would fuse it into a Gelu, ignoring the 2
    assert ("qnn-gelu-fusion", "/act/Mul_1") in _rules(times_two)
    assert not [f for f in audit_model(_gelu_graph("times-two"), load_profile("jetson-orin-nano")).findings
                if f.rule in ("qnn-gelu-fusion", "op-fused")]


def test_no_runtime_check_for_tensorrt_targets(tmp_path):
    report = audit_onnx(_save(_gelu_graph("halved-away"), tmp_path / "m.onnx"), load_profile("jetson-orin-nano"),
                        runtime_check=True)
    assert report.runtime_check is None and "runtime check" not in report.table() and report.passed


# ------------------------------------------------------------------------------------ without the runtime


def test_without_onnxruntime_qnn_the_audit_says_op_list_only(tmp_path, monkeypatch, qnn_cache):
    monkeypatch.setattr(audit_runtime, "qnn_versions", lambda: None)
    path = _save(_gelu_graph("gelu"), tmp_path / "gelu.onnx")
    result = CliRunner().invoke(main, ["audit", str(path), "--target", "rb5-gen2"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("runtime check"))
    assert "onnxruntime-qnn is not installed" in line and "op list only" in line
    assert not qnn_cache.exists()


def test_no_runtime_check_is_said_aloud(tmp_path, qnn_cache):
    path = _save(_gelu_graph("halved-away"), tmp_path / "erf.onnx")
    result = CliRunner().invoke(main, ["audit", str(path), "--target", "rb5-gen2", "--no-runtime-check",
                                       "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 1  # the op list alone refuses this Erf
    assert "runtime check: skipped (--no-runtime-check); checked against the profile's op list only" in result.output
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["runtime_check"]["asked"] is False and not any(f["rule"] == "qnn-runtime" for f in data["findings"])


# ------------------------------------------------------------------------------------ with the runtime


def test_runtime_names_the_refused_erf(tmp_path, rb5, qnn_cache):
    _qnn()
    path = _save(_gelu_graph("halved-away"), tmp_path / "erf.onnx")
    report = audit_onnx(path, rb5, runtime_check=True)
    check = report.runtime_check
    assert check["asked"] and check["backend"] in ("htp", "gpu") and "onnxruntime-qnn" in check["runtime"]
    refused = [f for f in report.errors if f.rule == "qnn-runtime"]
    assert [(f.node, f.op) for f in refused] == [("/act/Erf", "Erf")]
    assert "refused by QNN" in refused[0].message and "ONNX Gelu (opset 20)" in refused[0].fix
    assert "refused 1 node (the qnn-runtime errors above)" in report.table()

    result = CliRunner().invoke(main, ["audit", str(path), "--target", "rb5-gen2"])
    assert result.exit_code == 1
    assert "qnn-runtime" in result.output and "/act/Erf" in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("runtime check"))
    assert "answer reused" in line  # asked once for this graph and runtime


def test_runtime_takes_the_same_graph_with_gelu(tmp_path, rb5, qnn_cache):
    _qnn()
    report = audit_onnx(_save(_gelu_graph("gelu"), tmp_path / "gelu.onnx"), rb5, runtime_check=True)
    assert report.passed and not report.errors
    assert report.runtime_check["asked"] and not report.runtime_check["refused"]
    assert "took the whole graph" in report.runtime_line()


def test_runtime_answer_is_cached_by_graph_and_runtime_version(tmp_path, rb5, qnn_cache, monkeypatch):
    _qnn()
    path = _save(_gelu_graph("whole"), tmp_path / "whole.onnx")
    first = audit_runtime.runtime_check(path, rb5)
    assert first.asked and not first.cached and not first.refused  # the EP fuses a whole erf GELU
    again = audit_runtime.runtime_check(path, rb5)
    assert again.cached and again.refused == first.refused
    assert len(list(qnn_cache.glob(f"{sha256_file(path)[:24]}-*.json"))) == 1
    real = audit_runtime.qnn_versions()
    monkeypatch.setattr(audit_runtime, "qnn_versions", lambda: {**real, "onnxruntime_qnn": "9.9.9"})
    assert audit_runtime.check_identity(rb5)["onnxruntime_qnn"] == "9.9.9"
    assert not audit_runtime.runtime_check(path, rb5).cached  # another runtime version asks again


# ------------------------------------------------------------------------------------ the build


def _stage(manifest, name):
    return next(s for s in manifest["stages"] if s["name"] == name)


def test_small_rb5_build_writes_gelu_at_opset_20(small_build):
    model = onnx.load(str(small_build.bundle_dir / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "Erf" not in ops and ops.count("Gelu") == 23
    assert {o.domain: o.version for o in model.opset_import} == {"": 20}
    gelu = _stage(small_build.manifest, "gelu")["details"]
    assert gelu["gelu"] == 23 and gelu["whole_chains"] == 11 and gelu["halved_away_chains"] == 12
    assert gelu["opset"] == [17, 20] and gelu["erf_left"] == 0
    # the rewrite's own difference: rounding only; and the graph still within the recipe's tolerance of PyTorch
    assert max(gelu["max_abs_diff_vs_input_graph"].values()) < 1e-5
    assert all(v <= gelu["tolerance"] for v in gelu["max_abs_diff"].values())
    names = [s["name"] for s in small_build.manifest["stages"]]
    assert names[:4] == ["export", "simplify", "gelu", "audit"]


def test_small_rb5_build_loads_whole_without_cpu_fallback(small_build, rb5):
    _qnn()
    import onnxruntime as ort

    devices = audit_runtime.register_qnn_ep()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    settings = audit_runtime.qnn_settings(rb5)
    options.add_provider_for_devices(devices, {"backend_type": "htp", "enable_htp_fp16_precision": "1",
                                               "soc_model": settings["soc_model"], "htp_arch": settings["htp_arch"],
                                               "htp_graph_finalization_optimization_mode": "1"})
    session = ort.InferenceSession(str(small_build.bundle_dir / "model.onnx"), options)  # raises if any node splits
    score, amap = session.run(None, {"image": np.full((1, 3, 224, 224), 0.5, np.float32)})
    assert score.shape == (1,) and amap.shape == (1, 1, 14, 14) and np.isfinite(amap).all()
    check = small_build.manifest["audit"]["runtime_check"]
    assert check["asked"] and check["refused"] == 0


def test_jetson_graph_is_the_simplified_graph_unchanged(small_build, small_recipe):
    from edgedeploy.host.pipeline import build

    out = small_build.bundle_dir.parent
    jetson = build(small_recipe, load_profile("jetson-orin-nano"), out, log=lambda line: None)
    names = [s["name"] for s in jetson.manifest["stages"]]
    assert "gelu" not in names
    simplified = _stage(jetson.manifest, "simplify")["outputs"]["model.onnx"]["sha256"]
    assert sha256_file(jetson.bundle_dir / "model.onnx") == simplified == jetson.manifest["model"]["sha256"]
    assert _stage(small_build.manifest, "gelu")["inputs"]["model.onnx"] == simplified  # the same graph, before QNN's form
    ops = [n.op_type for n in onnx.load(str(jetson.bundle_dir / "model.onnx")).graph.node]
    assert ops.count("Erf") == 23 and "Gelu" not in ops and "runtime_check" not in jetson.manifest["audit"]


@pytest.mark.slow
def test_full_size_rb5_build_is_taken_whole(tmp_path, rb5):
    """The default recipe (TinyViT-21M-512) for rb5-gen2: its 23 GELUs written as Gelu, the runtime takes it whole."""
    _qnn()
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.host.pipeline import build

    result = build(load_recipe(), rb5, tmp_path, log=lambda line: None)
    gelu = _stage(result.manifest, "gelu")["details"]
    assert gelu["gelu"] == 23 and gelu["erf_left"] == 0 and max(gelu["max_abs_diff_vs_input_graph"].values()) < 1e-4
    check = result.manifest["audit"]["runtime_check"]
    assert result.audit.passed and check["asked"] and check["refused"] == 0
