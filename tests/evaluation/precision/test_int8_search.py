"""`edgedeploy precision --precision w8a8` (issue 21, item 4): the mixed-precision search for the QDQ build.

Small recipe (edgezsad-tinyvit5m-224, seeded weights), demo, `--limit 4`: 12 images, 2 normal and 2 anomalous per
category. Budget: the defaults of `edgedeploy fidelity` (--max-drift 0.2, --max-pixel-drift 1.0). On these images
plain w8a8 (ONNX Runtime CPU) fails that gate -- one real reordering (8.333 points of the mean) and pixel AUROC
down 1.28 points -- so no tighter budget had to be constructed; the search, `--max-evals 2 --top 1`, finds an override
set (stages.0 and the readout kept float) that passes. The whole module takes about 5 minutes on a 2-core CPU (each
candidate is one quantisation, ~9 s); the nothing-passes case reuses the first run's stage and score caches.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgedeploy.cli import main

SMALL = "edgezsad-tinyvit5m-224"


def _invoke(*args):
    return CliRunner().invoke(main, ["precision", "--bench", "demo", "--recipe", SMALL,
                                                     *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One OUT (the build's stage cache: every quantised graph) and one score cache for the module."""
    root = tmp_path_factory.mktemp("int8-search")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEDEPLOY_CACHE", str(root / "cache"))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def found(shared):
    report_dir = shared / "found"
    result = _invoke("--target", "rb5-gen2-npu", "--precision", "w8a8", "--calibration", "demo", "--limit", 4,
                     "--max-evals", 2, "--top", 1, "--out", shared / "out", "--report", report_dir)
    return result, json.loads((report_dir / "precision.json").read_text())


def test_plain_w8a8_fails_and_the_found_overrides_pass(found, shared):
    result, report = found
    assert result.exit_code == 0, result.output
    before, after, rec = report["before"], report["after"], report["recommendation"]
    # plain w8a8 fails fidelity's gate on these images; the override set passes image and pixel gate
    assert before["nodes_raised"] == 0 and before["gate_passed"] is False
    assert after["gate_passed"] is True and after["image_passed"] and after["pixel_passed"]
    assert rec["within_budget"] is True and rec["why_not"] is None
    assert len(rec["keep_float"]) == after["nodes_raised"] == rec["cost"]["nodes_raised"] > 0
    assert "pixel_auroc" in after["metrics"] and "aupro" in after["metrics"]
    assert after["metrics"]["pixel_auroc"]["host"] - after["metrics"]["pixel_auroc"]["device"] <= 1.0 + 1e-9
    # the overrides as the build takes them, resolved with the build's own resolver to exactly the found set
    from edgedeploy.targets.quantize import default_exclusions, expand_keep_float
    import onnx

    float_graph = onnx.load(report["model"]["bundle"] + "/model.onnx", load_external_data=False)
    resolved = set(expand_keep_float(float_graph, tuple(rec["keep_float_args"])))
    assert resolved - set(default_exclusions(float_graph)) == set(rec["keep_float"])
    cmd = rec["build_command"]
    assert cmd.startswith("edgedeploy build --target rb5-gen2-npu --recipe edgezsad-tinyvit5m-224 --precision w8a8 "
                          "--calibration demo --keep-float ")
    assert cmd.count("--keep-float ") == len(rec["keep_float_args"])
    # its cost: nodes raised and graph sizes (the raised graph is larger than plain w8a8, far smaller than float)
    cost = rec["cost"]
    assert cost["plain_graph_mib"] < cost["graph_mib"] < cost["float_graph_mib"]
    assert after["graph_bytes"] > before["graph_bytes"]
    # a sensitivity ranking, one row per candidate kept float alone, the device stand-in named
    assert len(report["sensitivity"]) >= 10 and report["sensitivity"][0]["nodes"] > 0
    assert "ONNX Runtime CPU" in report["device"] and "qnn-htp" in report["device_note"]
    out = result.output
    for text in ("sensitivity: group kept float alone", "plain w8a8:", "override set (", "passes the gate",
                 "cost: ", "MiB vs plain w8a8", "build:    edgedeploy build --target rb5-gen2-npu", "precision.json"):
        assert text in out, text
    assert "pure FP16" not in result.stderr and "FP32 nodes" not in result.stderr


def test_the_found_build_is_the_graph_the_search_judged(found, shared):
    """`edgedeploy build` with the emitted --keep-float makes the very QDQ graph the search passed (same sha256)."""
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.host.pipeline import build
    from edgedeploy.targets import quantize as q

    _, report = found
    rec = report["recommendation"]
    request = q.QuantizeRequest(precision="w8a8", calibration="demo", keep_float=tuple(rec["keep_float_args"]))
    built = build(load_recipe(SMALL), load_profile("rb5-gen2-npu"), shared / "build", log=lambda line: None,
                  quantize=request, calibration=q.resolve_calibration(request))
    assert built.manifest["model"]["sha256"] == report["after"]["graph_sha256"]
    assert set(rec["keep_float"]) <= set(built.manifest["quantization"]["kept_float"]["nodes"])


def test_nothing_passes_is_one_line_exit_1(found, shared):
    """An unreachable score budget (w8a8 is never exact) with one evaluation: exit 1 and one line saying why."""
    report_dir = shared / "none"
    result = _invoke("--target", "rb5-gen2-npu", "--precision", "w8a8", "--calibration", "demo", "--limit", 4,
                     "--max-evals", 1, "--top", 1, "--max-score-error", 1e-6, "--out", shared / "out",
                     "--report", report_dir)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, result.stderr
    assert "no --keep-float set within --max-evals 1 passed the gate" in errors[0] and "max |score diff|" in errors[0]
    report = json.loads((report_dir / "precision.json").read_text())
    assert report["recommendation"]["within_budget"] is False
    assert report["recommendation"]["why_not"] in errors[0]


@pytest.mark.parametrize("args, words", [
    (("--target", "rb5-gen2-npu", "--precision", "int8", "--calibration", "demo"),
     ("--precision int8", "fp16, w8a16, w8a8")),
    (("--target", "jetson-orin-nano", "--precision", "w8a8", "--calibration", "demo"), ("fp16, int8",)),
    (("--target", "rb5-gen2-npu", "--precision", "w8a8"), ("needs --calibration",)),
    (("--target", "rb5-gen2-npu", "--calibration", "demo"), ("--calibration applies to an integer --precision",)),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, words):
    result = _invoke(*args, "--out", tmp_path)
    assert result.exit_code == 2, result.output
    text = result.output  # stdout and stderr, as the terminal shows them
    assert "Traceback" not in text
    lines = [line for line in text.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1, text
    for word in words:
        assert word in lines[0], text


def test_jetson_int8_path_end_to_end(shared):
    """The Jetson's integer path (TensorRT's symmetric signed INT8 QDQ, not the QNN helper) through the search: with
    no evaluation budget beyond plain int8 it judges that graph, and where it fails says so in one line, exit 1,
    with a report naming the Jetson build (measured: plain int8 on these 12 images reorders 4 pairs, 33.3 points;
    the full search, `--max-evals 4`, passes with `/stages.0/*` kept float, docs/precision.md)."""
    report_dir = shared / "jetson"
    result = _invoke("--target", "jetson-orin-nano", "--precision", "int8", "--calibration", "demo", "--limit", 4,
                     "--max-evals", 0, "--out", shared / "out", "--report", report_dir)
    assert "Traceback" not in result.output
    report = json.loads((report_dir / "precision.json").read_text())
    before = report["before"]
    assert report["precision"] == "int8" and report["target"] == "jetson-orin-nano"
    assert before["nodes_raised"] == 0 and before["graph_bytes"] > 0
    assert report["recommendation"]["build_command"].startswith(
        "edgedeploy build --target jetson-orin-nano --recipe edgezsad-tinyvit5m-224 --precision int8 --calibration demo")
    # the graph it judged is TensorRT's form: signed INT8 Q/DQ, symmetric (zero points 0)
    import onnx
    from onnx import numpy_helper

    graphs = sorted((shared / "out" / "precision" / ".build" / ".stages").rglob("model.onnx"),
                    key=lambda p: p.stat().st_mtime)
    qdq = [g for g in graphs if any(n.op_type == "QuantizeLinear" for n in
                                    onnx.load(str(g), load_external_data=False).graph.node)]
    model = onnx.load(str(qdq[-1]), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(z.dtype.name == "int8" and not z.any() for z in zero_points)
    assert before["gate_passed"] is False and before["reorderings"] >= 1
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "--max-evals 0" in errors[0], result.stderr
