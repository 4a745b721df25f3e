"""ONNX Runtime's QNN execution provider (onnxruntime-qnn) as a runner: the real HTP backend, emulated on this CPU.

Tiny hand-made graphs keep most tests to seconds; one slow test scores two demo images with the small recipe's
rb5-gen2 bundle. Where onnxruntime-qnn is not importable (Python 3.10, the core install) the backend tests skip and
the missing-package messages are still checked.
"""

from __future__ import annotations

import importlib.util
import platform

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgedeploy.cli import main
from edgedeploy.core.errors import BAD_INPUT, TOOL_FAILED
from edgedeploy.runtime.scorefile import read_maps, read_scores

needs_qnn = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_qnn") is None,
                               reason="onnxruntime-qnn is not importable here (pip install 'edgedeploy[qnn]' on "
                                      "Python 3.11+, Linux x86_64/aarch64)")
on_host = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                             reason="checks the x86_64 host's behaviour (no Adreno GPU, HTP emulated)")


def tiny_graph(path, seed=0, erf=False, size=32):
    """image 1x3xSxS -> Conv 16x16/16 -> [Erf] -> Sigmoid = anomaly_map 1x1x(S/16)^2 -> ReduceMax = score (1,)."""
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32) * 0.05,
                                "w")
    shape = numpy_helper.from_array(np.array([1], dtype=np.int64), "shape")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv", strides=[16, 16])]
    last = "c"
    if erf:
        nodes.append(helper.make_node("Erf", ["c"], ["e"], name="gelu_erf"))
        last = "e"
    nodes += [helper.make_node("Sigmoid", [last], ["anomaly_map"], name="sig"),
              helper.make_node("ReduceMax", ["anomaly_map"], ["m"], name="rmax", keepdims=0),
              helper.make_node("Reshape", ["m", "shape"], ["score"], name="reshape")]
    side = size // 16
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1]),
                               helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, side, side])],
                              [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _score(model, root, out, *extra):
    result = CliRunner().invoke(main, ["score", "--model", str(model), "--bench", "mvtec", "--data-root", str(root),
                                       "--out", str(out), *extra])
    return result


@pytest.fixture
def tree(tmp_path, make_mvtec_tree):
    return make_mvtec_tree(tmp_path / "mvtec", categories=("bottle",), n_good=1, n_bad=1, size=48)


# -- without the package -----------------------------------------------------------------------------------


def test_missing_package_says_which_extra(tmp_path, tree, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime_qnn", None)  # import onnxruntime_qnn -> ImportError
    result = _score(tiny_graph(tmp_path / "m.onnx"), tree, tmp_path / "s.csv", "--runtime", "qnn-htp")
    assert result.exit_code == BAD_INPUT, result.output
    line = result.output.strip()
    assert "\n" not in line and "onnxruntime-qnn" in line and "pip install 'edgedeploy[qnn]'" in line


def test_python_310_says_311_is_needed(tmp_path, tree, monkeypatch):
    import edgedeploy.runtime.qnn as qnn

    monkeypatch.setitem(__import__("sys").modules, "onnxruntime_qnn", None)
    monkeypatch.setattr(qnn, "_python", lambda: (3, 10))
    result = _score(tiny_graph(tmp_path / "m.onnx"), tree, tmp_path / "s.csv", "--runtime", "qnn-gpu")
    assert result.exit_code == BAD_INPUT, result.output
    assert "Python 3.11 or later" in result.output and "3.10" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_fallback_flag_needs_a_qnn_runtime(tmp_path, tree):
    result = _score(tiny_graph(tmp_path / "m.onnx"), tree, tmp_path / "s.csv", "--allow-cpu-fallback")
    assert result.exit_code == BAD_INPUT and "--runtime qnn-htp" in result.output


def test_profile_qnn_block_is_validated(tmp_path, monkeypatch):
    import yaml

    from edgedeploy.core.errors import ProfileError
    from edgedeploy.core.profiles import load_profile, profiles_dir

    rb5 = load_profile("rb5-gen2")
    assert rb5.qnn == {"soc_model": 66, "htp_arch": 73, "backends": ["gpu", "htp"]}
    assert rb5.summary()["qnn"] == rb5.qnn  # the bundle carries it to the board
    data = yaml.safe_load((profiles_dir() / "rb5-gen2.yaml").read_text())
    for bad, match in (({"htp_arch": 72}, "qnn.htp_arch"), ({"backends": ["gpu", "npu"]}, "qnn.backends"),
                       ({"soc_model": "66"}, "qnn.soc_model must be int")):
        data_bad = {**data, "qnn": {**data["qnn"], **bad}}
        path = tmp_path / "rb5-gen2.yaml"
        path.write_text(yaml.safe_dump(data_bad))
        with pytest.raises(ProfileError, match=match):
            load_profile(path)


# -- the real HTP backend (emulated here) --------------------------------------------------------------------


@needs_qnn
def test_runner_activates_again_and_matches_onnxruntime(tmp_path, tree):
    from edgedeploy.core.onnxfile import run_onnx
    from edgedeploy.runtime.qnn import QnnRunner

    path = tiny_graph(tmp_path / "a.onnx", seed=0)
    runner = QnnRunner(path, "htp", log=lambda line: None)
    x = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    ref = run_onnx(path, x)
    for _ in range(2):  # activate, deactivate, activate again
        scores, maps = runner.infer(x)
        assert runner.is_active and runner.cpu_nodes == []
        assert np.abs(scores - ref["score"]).max() < 5e-2 and np.abs(maps - ref["anomaly_map"][:, 0]).max() < 5e-2
        runner.deactivate()
        assert runner.session is None and not runner.is_active
    other = QnnRunner(tiny_graph(tmp_path / "b.onnx", seed=1), "htp", log=lambda line: None)
    ident_a, ident_b = runner.identity(), other.identity()
    assert ident_a["model"] != ident_b["model"] and ident_a["card"] == ident_b["card"]
    assert ident_a["qnn_sdk"] and ident_a["onnxruntime_qnn"] and ident_a["backend"] == "htp"
    assert ident_a != {**ident_a, "precision": "fp32"}
    assert QnnRunner(path, "htp", precision="fp32", log=lambda line: None).identity() != ident_a


@needs_qnn
def test_score_header_names_qnn_and_the_backend(tmp_path, tree):
    out = tmp_path / "s.csv"
    result = _score(tiny_graph(tmp_path / "m.onnx"), tree, out, "--runtime", "qnn-htp", "--save-maps")
    assert result.exit_code == 0, result.output
    meta = read_scores(out).meta
    assert meta["runner"] == "qnn-htp" and meta["backend"] == "htp" and meta["precision"] == "fp16"
    assert meta["qnn_sdk"] and meta["onnxruntime_qnn"] and meta["cpu_fallback"].startswith("off")
    assert "soc_model 66, htp_arch 73" in meta["qnn_chip"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert meta["qnn_where"].startswith("host") and "emulated" in meta["qnn_where"]
    assert "latency_ms_p50" in meta and len(read_scores(out).rows) == 2 and len(read_maps(out)) == 2


@needs_qnn
def test_split_graph_is_refused_unless_fallback_is_allowed(tmp_path, tree):
    from edgedeploy.runtime.qnn import QnnFallbackRefused
    from edgedeploy.runtime.score import open_runner

    path = tiny_graph(tmp_path / "erf.onnx", erf=True)
    with pytest.raises(QnnFallbackRefused) as refused:
        open_runner(path, log=lambda line: None, runtime="qnn-htp")
    assert refused.value.nodes == [("gelu_erf", "Erf")]
    result = _score(path, tree, tmp_path / "s.csv", "--runtime", "qnn-htp")
    assert result.exit_code == TOOL_FAILED, result.output
    assert "gelu_erf (Erf)" in result.output and "--allow-cpu-fallback" in result.output
    assert len(result.output.strip().splitlines()) == 1

    out = tmp_path / "fallback.csv"
    result = _score(path, tree, out, "--runtime", "qnn-htp", "--allow-cpu-fallback")
    assert result.exit_code == 0, result.output
    assert "1 node left the QNN HTP backend" in result.output and "Erf x1" in result.output
    assert read_scores(out).meta["cpu_fallback"] == "allowed: 1 nodes ran on the CPU (Erf x1)"


@needs_qnn
@on_host
def test_gpu_backend_without_an_adreno(tmp_path, tree):
    for extra in ((), ("--allow-cpu-fallback",)):  # with fallback it must not quietly run everything on the CPU
        result = _score(tiny_graph(tmp_path / "m.onnx"), tree, tmp_path / "s.csv", "--runtime", "qnn-gpu", *extra)
        assert result.exit_code == TOOL_FAILED, result.output
        assert "GPU backend did not initialise" in result.output and "Adreno" in result.output
        assert "--runtime qnn-htp" in result.output and len(result.output.strip().splitlines()) == 1


@needs_qnn
def test_context_round_trip_and_version_refusal(tmp_path, tree):
    from edgedeploy.runtime.qnn import QnnContextError, QnnRunner, QnnSettings
    from edgedeploy.targets.qnn.context import build_context

    path = tiny_graph(tmp_path / "model.onnx")
    settings = QnnSettings.resolve(None)
    record = build_context(path, tmp_path / "model_ctx.onnx", settings)
    assert record["status"] == "built" and record["qnn_sdk"] == QnnRunner(path, log=print).identity()["qnn_sdk"]
    assert record["soc_model"] == 66 and record["htp_arch"] == 73 and record["precision"] == "fp16"
    x = np.random.default_rng(5).random((2, 3, 32, 32), dtype=np.float32)
    compiled, loaded = QnnRunner(path, log=print), QnnRunner(tmp_path / "model_ctx.onnx", log=print)
    a, b = compiled.infer(x), loaded.infer(x)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # the same binary: the same numbers
    assert loaded.meta()["model_sha256"] == record["source_sha256"] and "qnn_context" in loaded.meta()
    assert loaded.identity()["model"] == record["sha256"]

    result = _score(tmp_path / "model_ctx.onnx", tree, tmp_path / "s.csv")  # plain ONNX Runtime cannot run it
    assert result.exit_code == BAD_INPUT and "--runtime qnn-htp" in result.output

    model = onnx.load(str(tmp_path / "model_ctx.onnx"))  # the same context, claiming another QNN SDK
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "ep_sdk_version":
                attr.s = b"v2.45.0.250101000000"
    for prop in model.metadata_props:
        prop.value = prop.value.replace(record["qnn_sdk"], "2.45.0")
    (tmp_path / "old").mkdir()
    onnx.save(model, str(tmp_path / "old" / "model_ctx.onnx"))
    with pytest.raises(QnnContextError, match="QNN SDK 2.45.0"):
        QnnRunner(tmp_path / "old" / "model_ctx.onnx", log=print).activate()
    result = _score(tmp_path / "old" / "model_ctx.onnx", tree, tmp_path / "s.csv", "--runtime", "qnn-htp")
    assert result.exit_code == BAD_INPUT and "2.45.0" in result.output and len(result.output.strip().splitlines()) == 1


@needs_qnn
def test_build_hook_builds_reuses_or_says_why_not(tmp_path, monkeypatch):
    from edgedeploy.core.hashing import sha256_file
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.targets.qnn.context import SWITCH, prepare_context

    profile = load_profile("rb5-gen2")
    bundle = tmp_path / "rb5-gen2"
    bundle.mkdir()

    def manifest_for(**kw):
        path = tiny_graph(bundle / "model.onnx", **kw)
        return {"model": {"path": "model.onnx", "sha256": sha256_file(path)}}

    record, line = prepare_context(bundle, profile, manifest_for())
    assert record["status"] == "built" and not record["reused"] and (bundle / "model_ctx.onnx").is_file()
    assert line.startswith("QNN HTP context: model_ctx.onnx (built in") and "--runtime qnn-htp" in line
    again, line = prepare_context(bundle, profile, manifest_for())
    assert again["reused"] and again["sha256"] == record["sha256"] and "(reused;" in line

    record, line = prepare_context(bundle, profile, manifest_for(erf=True))  # a graph the HTP takes in part
    assert record["status"] == "not-built" and "gelu_erf (Erf)" in record["reason"]
    assert not (bundle / "model_ctx.onnx").exists() and "\n" not in line  # no context of an older graph is left

    monkeypatch.setenv(SWITCH, "0")
    record, line = prepare_context(bundle, profile, manifest_for(seed=2))
    assert record == {"status": "not-built", "reason": f"{SWITCH}=0 is set"}


def test_build_hook_without_the_package(tmp_path, monkeypatch):
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.targets.qnn.context import prepare_context

    monkeypatch.setitem(__import__("sys").modules, "onnxruntime_qnn", None)
    (tmp_path / "model.onnx").write_bytes(b"")
    record, line = prepare_context(tmp_path, load_profile("rb5-gen2"), {"model": {"path": "model.onnx", "sha256": "x"}})
    assert record["status"] == "not-built" and "pip install 'edgedeploy[qnn]'" in record["reason"]


@needs_qnn
@pytest.mark.slow
def test_small_bundle_two_demo_images_close_to_onnxruntime(tmp_path, small_build):
    """The small recipe's rb5-gen2 bundle on the HTP for two demo images (about 20 s each here), against ONNX Runtime
    FP32. --allow-cpu-fallback: until its GELUs are written as an op QNN takes, the graph holds Erf nodes."""
    import shutil

    from edgedeploy.evaluation.data import load_benchmark

    demo = load_benchmark("demo", None, ["brick"])
    good = next(s for s in demo.samples if s.label == 0)
    bad = next(s for s in demo.samples if s.label == 1)
    root = tmp_path / "two"  # the two images in an MVTec-layout tree of their own
    for sample in (good, bad):
        for src in (sample.path, sample.mask_path):
            if src is not None:
                dst = root / src.relative_to(demo.root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst)
    model = small_build.bundle_dir / "model.onnx"
    htp, cpu = tmp_path / "htp.csv", tmp_path / "cpu.csv"
    result = _score(model, root, htp, "--runtime", "qnn-htp", "--allow-cpu-fallback", "--save-maps")
    assert result.exit_code == 0, result.output
    assert _score(model, root, cpu, "--save-maps").exit_code == 0
    h, c = read_scores(htp), read_scores(cpu)
    assert h.meta["runner"] == "qnn-htp" and h.meta["backend"] == "htp" and h.meta["qnn_sdk"]
    assert h.meta["target"] == "rb5-gen2" and h.meta["cpu_fallback"].startswith("allowed")
    diffs = [abs(h.by_path()[p].score - row.score) for p, row in c.by_path().items()]
    assert len(diffs) == 2 and max(diffs) < 5e-2
    hm, cm = read_maps(htp), read_maps(cpu)
    assert max(float(np.abs(hm[p] - cm[p]).max()) for p in cm) < 5e-2
