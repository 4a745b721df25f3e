"""`edgedeploy build --precision w8a16|w8a8|int8 --calibration ...` (edgedeploy.targets.quantize): the bad inputs, each
one line and exit 2 before anything is built; the calibration record and the QDQ graphs of both targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgedeploy.cli import main

SMALL = "edgezsad-tinyvit5m-224"


def build(out: Path, *args: str):
    return CliRunner().invoke(main, ["build", "--recipe", SMALL, "--out", str(out), *args])


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def demo_test_good():
    from edgedeploy.evaluation.data.benchmarks import load_benchmark

    return [s.path for s in load_benchmark("demo").samples if s.label == 0]


# ---------------------------------------------------------------------------------------- must fail (exit 2)


def test_precision_the_profile_does_not_list(tmp_path):
    one_line_error(build(tmp_path, "--target", "rb5-gen2", "--precision", "w8a8", "--calibration", "demo"),
                   "w8a8", "fp16")
    one_line_error(build(tmp_path, "--target", "jetson-orin-nano", "--precision", "w8a16", "--calibration", "demo"),
                   "fp16, int8")
    assert not (tmp_path / ".stages").exists()  # refused before the export


def test_integer_precision_needs_calibration_and_calibration_needs_one(tmp_path):
    one_line_error(build(tmp_path, "--target", "rb5-gen2-npu", "--precision", "w8a16"), "--calibration")
    one_line_error(build(tmp_path, "--target", "rb5-gen2-npu", "--calibration", "demo"), "--calibration", "fp16")


def test_no_normal_images_and_too_few(tmp_path, demo_test_good):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(build(tmp_path, "--target", "rb5-gen2-npu", "--precision", "w8a8", "--calibration", str(empty)),
                   "found 0 normal images", "at least 4")
    few = tmp_path / "few"
    few.mkdir()
    for p in demo_test_good[:2]:
        shutil.copy(p, few / p.name)
    one_line_error(build(tmp_path, "--target", "rb5-gen2-npu", "--precision", "w8a8", "--calibration", str(few)),
                   "found 2 normal images")
    one_line_error(build(tmp_path, "--target", "rb5-gen2-npu", "--precision", "w8a8", "--calibration", str(few),
                         "--calibration-method", "entropy"), "at least 8")


def test_overlap_with_the_test_split_is_refused_unless_allowed(tmp_path, demo_test_good):
    from edgedeploy.targets.quantize import QuantizeRequest, resolve_calibration

    folder = tmp_path / "mine"
    folder.mkdir()
    for i, p in enumerate(demo_test_good[:4]):  # renamed copies: the overlap is found by content
        shutil.copy(p, folder / f"normal_{i}.png")
    one_line_error(build(tmp_path, "--target", "rb5-gen2-npu", "--precision", "w8a8", "--calibration", str(folder),
                         "--eval-bench", "demo"), "4 calibration image(s) are also demo test images",
                   "--allow-calibration-overlap")
    calib = resolve_calibration(QuantizeRequest("w8a8", str(folder), eval_bench="demo", allow_overlap=True))
    assert calib.overlap["images"] == 4 and calib.overlap["allowed"] is True
    unchecked = resolve_calibration(QuantizeRequest("w8a8", str(folder)))  # a folder, no --eval-bench: said so
    assert unchecked.overlap["checked"] is False and "--eval-bench" in unchecked.overlap["reason"]


def test_the_demo_train_split_does_not_overlap_its_test_split():
    from edgedeploy.targets.quantize import QuantizeRequest, resolve_calibration

    calib = resolve_calibration(QuantizeRequest("w8a16", "demo", limit=6))
    assert calib.found == 24 and len(calib.images) == 6
    assert {p.parent.name for p in calib.images} == {"good"} and all("train" in p.parts for p in calib.images)
    assert {p.parts[-4] for p in calib.images} == {"brick", "grass", "gravel"}  # spread over the categories
    assert calib.overlap == {"checked": True, "eval_bench": "demo", "eval_split": "test", "eval_images": 144,
                             "images": 0, "examples": [], "allowed": False}


# ---------------------------------------------------------------------------------------- the QDQ bundles


@pytest.fixture(scope="module")
def qdq_bundles(tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("qdq")
    monkeypatch_module.setenv("EDGEDEPLOY_OFFLINE", "1")
    for target, precision in (("rb5-gen2-npu", "w8a16"), ("jetson-orin-nano", "int8")):
        result = build(out, "--target", target, "--precision", precision, "--calibration", "demo",
                       "--calibration-limit", "4")
        assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_manifest_records_the_calibration(qdq_bundles):
    from edgedeploy.core.hashing import sha256_file

    manifest = json.loads((qdq_bundles / "rb5-gen2-npu" / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["precision"] == "w8a16" and q["settings"]["method"] == "MinMax"
    assert q["settings"]["activation_type"] == "QUInt16" and q["settings"]["weight_type"] == "QUInt8"
    cal = q["calibration"]
    assert cal["kind"] == "benchmark" and cal["name"] == "demo" and cal["split"] == "train" and cal["images"] == 4
    assert all(sha256_file(f["path"]) == f["sha256"] for f in cal["files"])
    assert cal["overlap"]["checked"] and cal["overlap"]["images"] == 0
    kept = q["kept_float"]
    assert kept["default_exclusions"] and set(kept["by_reason"]) == {"LayerNorm", "Softmax", "GELU", "residual Add"}
    assert manifest["model"]["sha256"] == sha256_file(qdq_bundles / "rb5-gen2-npu" / "model.onnx") != q["source_sha256"]
    # the HTP backend (onnxruntime-qnn, CPU fallback off) took the whole QDQ graph: its context was compiled
    ctx = manifest["compile"]["qnn_context"]
    assert ctx["status"] == "built" and ctx["quantization"] == "w8a16", ctx


W8A16_SCORE_TOLERANCE = 0.08  # measured 0.024-0.05 max |diff| on demo images (seeded weights; docs/quantization.md)


def test_w8a16_scores_stay_near_fp32_in_onnxruntime(qdq_bundles):
    import onnxruntime as ort

    from edgedeploy.evaluation.data.benchmarks import load_benchmark
    from edgedeploy.evaluation.data.preprocess import load_image

    stages = qdq_bundles / ".stages"
    manifest = json.loads((qdq_bundles / "rb5-gen2-npu" / "manifest.json").read_text())
    float_graph = next(p for p in stages.glob("gelu-*/model.onnx"))
    from edgedeploy.core.hashing import sha256_file

    assert sha256_file(float_graph) == manifest["quantization"]["source_sha256"]
    test = load_benchmark("demo").samples
    images = np.stack([load_image(test[i].path, 224) for i in (0, 50, 100, 140)])
    scores = []
    for path in (float_graph, qdq_bundles / "rb5-gen2-npu" / "model.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        scores.append(np.array([session.run(["score"], {"image": x[None]})[0].ravel()[0] for x in images]))
    diff = np.abs(scores[0] - scores[1])
    assert np.isfinite(scores[1]).all() and diff.max() < W8A16_SCORE_TOLERANCE, (scores, diff)
    assert diff.max() > 0  # really quantised


def test_jetson_int8_graph_is_symmetric_per_channel_int8(qdq_bundles):
    import onnx
    from onnx import numpy_helper

    bundle = qdq_bundles / "jetson-orin-nano"
    manifest = json.loads((bundle / "manifest.json").read_text())
    trtexec = manifest["compile"]["trtexec"]
    assert "--int8" in trtexec.split() and "--fp16" in trtexec.split() and "calib" not in trtexec
    assert "--int8" in (bundle / "build_engine.sh").read_text()
    model = onnx.load(str(bundle / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(n.domain in ("", "ai.onnx") for n in qdq)
    for node in qdq:
        zero = inits[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), node.name
    dq_of = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in dq_of
                and dq_of[n.input[1]].input[0] in inits]
    assert {n.op_type for n in weighted} >= {"Conv", "Gemm"}
    for node in weighted:
        dq = dq_of[node.input[1]]
        assert inits[dq.input[0]].dtype == np.int8
        assert inits[dq.input[1]].size > 1, f"{node.name}: per-tensor weight scale"  # per-channel
    assert not any(inits[dq.input[0]].dtype == np.int32 for dq in dq_of.values() if dq.input[0] in inits)  # float bias


def test_a_qdq_graph_to_a_profile_without_int8(qdq_bundles, tmp_path):
    import yaml

    from edgedeploy.core.profiles import profiles_dir

    data = yaml.safe_load((profiles_dir() / "jetson-orin-nano.yaml").read_text())
    del data["runtime"]["precisions"]  # fp16 only
    profile = tmp_path / "jetson-orin-nano.yaml"
    profile.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["build", "--onnx", str(qdq_bundles / "jetson-orin-nano" / "model.onnx"),
                                       "--target", str(profile), "--out", str(tmp_path / "out")])
    one_line_error(result, "quantised (QDQ)", "lists no integer precision")


def test_keep_float_must_match_a_node(qdq_bundles):
    result = build(qdq_bundles, "--target", "rb5-gen2-npu", "--precision", "w8a8", "--calibration", "demo",
                   "--calibration-limit", "4", "--keep-float", "/no/such/node*")
    one_line_error(result, "--keep-float /no/such/node*", "matches no node")


# ------------------------------------------------------------------------------------------- the score head


def _head_graph():
    """image -> Conv -> Sigmoid = anomaly_map; score = 0.5*sigmoid(MatMul(pool)) + 0.5*mean(top-2 of the map), as
    EdgeGLR fuses its global and local terms."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    nodes = [
        helper.make_node("Conv", ["image", "w_conv"], ["feat"], name="/backbone/Conv"),
        helper.make_node("Conv", ["feat", "w_map"], ["logit_map"], name="/readout/Conv"),
        helper.make_node("Sigmoid", ["logit_map"], ["anomaly_map"], name="/readout/Sigmoid"),
        helper.make_node("Flatten", ["anomaly_map"], ["flat"], name="/readout/Flatten"),
        helper.make_node("TopK", ["flat", "k"], ["top", "top_idx"], name="/readout/TopK"),
        helper.make_node("ReduceMean", ["top"], ["local"], axes=[1], keepdims=0, name="/readout/ReduceMean"),
        helper.make_node("Mul", ["local", "half"], ["local_half"], name="/readout/Mul_7"),
        helper.make_node("GlobalAveragePool", ["feat"], ["pooled4"], name="/readout/Pool"),
        helper.make_node("Flatten", ["pooled4"], ["pooled"], name="/readout/Flatten_1"),
        helper.make_node("MatMul", ["pooled", "w_global"], ["global_logit"], name="/readout/MatMul"),
        helper.make_node("Sigmoid", ["global_logit"], ["global2"], name="/readout/Sigmoid_1"),
        helper.make_node("Flatten", ["global2"], ["global"], axis=0, name="/readout/Flatten_2"),
        helper.make_node("Mul", ["global", "half"], ["global_half"], name="/readout/Mul_6"),
        helper.make_node("Add", ["global_half", "local_half"], ["score"], name="/readout/Add_4"),
    ]
    inits = [const("w_conv", np.ones((4, 3, 1, 1))), const("w_map", np.ones((1, 4, 1, 1))),
             const("w_global", np.ones((4, 1))), const("half", 0.5), const("k", [2], np.int64)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph)


def test_the_score_head_is_what_turns_map_and_features_into_the_score():
    """Back from the score to the last weighted layer, the map's producer included (TopK reads the map), its
    features not; the warning names its quantised computing nodes: the fusion Add is a residual Add (float by
    default) and Flatten moves data."""
    from edgedeploy.targets.quantize import default_exclusions, quantised_score_head, score_head

    model = _head_graph()
    assert score_head(model, "score") == ["/readout/Sigmoid", "/readout/Flatten", "/readout/TopK",
                                          "/readout/ReduceMean", "/readout/Mul_7", "/readout/Sigmoid_1",
                                          "/readout/Flatten_2", "/readout/Mul_6", "/readout/Add_4"]
    excluded = default_exclusions(model)
    assert "/readout/Add_4" in excluded
    head = quantised_score_head(model, "score", excluded)
    assert head == ["/readout/Sigmoid", "/readout/TopK", "/readout/ReduceMean", "/readout/Mul_7",
                    "/readout/Sigmoid_1", "/readout/Mul_6"]
    assert quantised_score_head(model, "score", {**excluded, **dict.fromkeys(head, "--keep-float")}) == []
    assert score_head(model, "no-such-output") == []


def test_a_quantised_score_head_is_a_warning_naming_the_nodes(qdq_bundles):
    """Both targets' default builds quantise EdgeZSAD's score head; the build says so, with the --keep-float line
    (the six nodes `precision --precision w8a8` found on EfficientNet-Lite0, docs/quantization.md)."""
    six = ["/readout/Sigmoid", "/readout/TopK", "/readout/ReduceMean", "/readout/Sigmoid_1", "/readout/Mul_6",
           "/readout/Mul_7"]
    for target in ("rb5-gen2-npu", "jetson-orin-nano"):
        manifest = json.loads((qdq_bundles / target / "manifest.json").read_text())
        assert manifest["quantization"]["score_head_quantised"] == six, target
        lines = [w for w in manifest["warnings"] if w.startswith("the score head is quantised (6 nodes)")]
        assert len(lines) == 1 and " ".join(f"--keep-float {n}" for n in six) in lines[0], manifest["warnings"]
