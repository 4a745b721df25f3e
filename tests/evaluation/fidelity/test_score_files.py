"""`edgedeploy fidelity --host-scores A --device-scores B`: two score files compared, no model, no images.

The files are written by hand, as a user with a GPU workstation and a Jetson would have them, at several
scales; a NaN from the device fails the gate (exit 1) with the image named; malformed or mismatched files
are bad input (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgedeploy.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, ["fidelity", *map(str, args)], catch_exceptions=False)


def _write(path: Path, scores, labels, categories=None, header=("bench: mine",), paths=None) -> Path:
    categories = categories if categories is not None else ["part"] * len(scores)
    paths = paths or [f"{c}/{i:03d}.png" for i, c in enumerate(categories)]
    lines = ["# edgedeploy-scores: 1", *(f"# {h}" for h in header), "path,category,label,score"]
    lines += [f"{p},{c},{int(lab)},{float(s)!r}" for p, c, lab, s in zip(paths, categories, labels, scores)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _scores(seed: int, scale: float, n: int = 40):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
    return labels, scale * (1 + 0.05 * (rng.normal(size=labels.size) + labels))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 110.0, 1e4])
def test_fp16_rounded_device_passes_and_a_shuffled_one_fails(tmp_path, scale):
    labels, host = _scores(1, scale)
    h = _write(tmp_path / "host.csv", host, labels)
    rounded = _write(tmp_path / "rounded.csv", host.astype(np.float16).astype(np.float64), labels)
    shuffled = _write(tmp_path / "shuffled.csv", np.random.default_rng(2).permutation(host), labels)
    ok = _invoke("--host-scores", h, "--device-scores", rounded, "--report", tmp_path / "ok", "--no-plots")
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.stdout and "FP16 error model" in ok.stdout
    bad = _invoke("--host-scores", h, "--device-scores", shuffled, "--report", tmp_path / "bad", "--no-plots")
    assert bad.exit_code == 1, bad.output
    assert "FAIL" in bad.stdout and "not rounding them" in bad.stdout
    data = json.loads((tmp_path / "bad" / "fidelity.json").read_text())
    assert data["passed"] is False and data["bench"] == "mine" and data["error_model"]["epsilon"] == 2 ** -5


def test_nan_from_the_device_fails_the_gate_and_names_the_image_first(tmp_path):
    labels, host = _scores(3, 1.0)
    device = host.copy()
    device[5], device[50] = np.nan, np.inf
    h = _write(tmp_path / "host.csv", host, labels)
    d = _write(tmp_path / "device.csv", device, labels)
    result = _invoke("--host-scores", h, "--device-scores", d, "--report", tmp_path / "r")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[0] == "NaN/inf device scores in part (2): part/005.png, part/050.png"
    md = (tmp_path / "r" / "fidelity.md").read_text()
    assert md.index("`part/005.png`") < md.index("## Drift per category")
    assert json.loads((tmp_path / "r" / "fidelity.json").read_text())["categories"][0]["nonfinite"] == [
        "part/005.png", "part/050.png"]


def test_score_written_by_edgedeploy_score_with_nan_is_kept(tmp_path):
    from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable, read_scores, write_scores

    write_scores(tmp_path / "s.csv", ScoreTable({"bench": "mine"}, [ScoreRow("a/1.png", "a", 0, float("nan"))]))
    assert np.isnan(read_scores(tmp_path / "s.csv").rows[0].score)


def test_pixel_metrics_and_benchmark_check_with_bench(tmp_path, make_mvtec_tree):
    """With --bench/--data-root the files are checked against the benchmark and the masks give pixel metrics."""
    from edgedeploy.evaluation.data import load_benchmark
    from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable, write_scores

    root = make_mvtec_tree(tmp_path / "mvtec", categories=("bottle",), n_good=4, n_bad=4)
    bench = load_benchmark("mvtec", root)
    rng = np.random.default_rng(0)
    maps = {s.rel_path: rng.random((14, 14)).astype(np.float32) + s.label for s in bench.samples}
    rows = [ScoreRow(s.rel_path, s.category, s.label, 0.2 + 0.1 * s.label + 0.01 * i)
            for i, s in enumerate(bench.samples)]
    meta = {"bench": "mvtec", "recipe": "edgezsad-tinyvit5m-224", "checkpoint_sha256": "seeded"}
    write_scores(tmp_path / "host.csv", ScoreTable(meta, rows), maps)
    write_scores(tmp_path / "device.csv", ScoreTable({**meta, "runner": "tensorrt"}, rows), maps)
    result = _invoke("--host-scores", tmp_path / "host.csv", "--device-scores", tmp_path / "device.csv",
                     "--bench", "mvtec", "--data-root", root, "--report", tmp_path / "r", "--no-plots")
    assert result.exit_code == 0, result.output
    c = json.loads((tmp_path / "r" / "fidelity.json").read_text())["categories"][0]
    assert {"pixel_auroc", "aupro"} <= set(c["host_metrics"]) and c["drift"] == 0
    other = make_mvtec_tree(tmp_path / "other", categories=("bottle",), n_good=3, n_bad=4)
    result = _invoke("--host-scores", tmp_path / "host.csv", "--device-scores", tmp_path / "device.csv",
                     "--bench", "mvtec", "--data-root", other, "--report", tmp_path / "r2")
    assert result.exit_code == 2 and "bottle/test/good/003.png" in result.output


def _pair(tmp_path, device_header=("bench: mine",), device_labels=None, device_paths=None):
    labels, host = _scores(4, 1.0, n=6)
    h = _write(tmp_path / "host.csv", host, labels)
    d = _write(tmp_path / "device.csv", host, labels if device_labels is None else device_labels,
               header=device_header, paths=device_paths)
    return h, d


@pytest.mark.parametrize("case, message", [
    ("no device", "--host-scores needs --device-scores"),
    ("checkpoint", "--checkpoint contradicts it"),
    ("onnx", "--onnx contradicts it"),
    ("other bench", "differ in 'bench' (mine vs mvtec)"),
    ("other labels", "another category or label: part/000.png"),
    ("other images", "only in host.csv: part/011.png"),
    ("bad header", "not an edgedeploy score file"),
    ("text score", "is not a number"),
    ("duplicate", "duplicate rows for part/000.png"),
    ("bench mismatch", "but --bench is demo"),
])
def test_bad_input_exits_2_in_one_line(tmp_path, case, message):
    h, d = _pair(tmp_path)
    args = ["--host-scores", h, "--device-scores", d, "--report", tmp_path / "r"]
    if case == "no device":
        args = ["--host-scores", h, "--report", tmp_path / "r"]
    elif case == "checkpoint":
        (tmp_path / "c.pt").write_bytes(b"x")
        args += ["--checkpoint", tmp_path / "c.pt"]
    elif case == "onnx":
        (tmp_path / "m.onnx").write_bytes(b"x")
        args += ["--onnx", tmp_path / "m.onnx"]
    elif case == "other bench":
        _pair(tmp_path, device_header=("bench: mvtec",))
    elif case == "other labels":
        labels, _ = _scores(4, 1.0, n=6)
        labels[0] = 1
        _pair(tmp_path, device_labels=labels)
    elif case == "other images":
        _pair(tmp_path, device_paths=[f"part/{i:03d}.png" for i in range(11)] + ["part/999.png"])
    elif case == "bad header":
        d.write_text(d.read_text().replace("# edgedeploy-scores: 1\n", ""))
    elif case == "text score":
        d.write_text(d.read_text().replace(",0\n", ",zero\n", 1) if ",0\n" in d.read_text()
                     else d.read_text().rstrip("\n").rsplit(",", 1)[0] + ",zero\n")
    elif case == "duplicate":
        d.write_text(d.read_text() + d.read_text().splitlines()[3] + "\n")
    elif case == "bench mismatch":
        args += ["--bench", "demo"]
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_all_equal_scores_are_said_in_words(tmp_path):
    labels, host = _scores(5, 1.0, n=6)
    h = _write(tmp_path / "host.csv", host, labels)
    d = _write(tmp_path / "device.csv", np.full(host.size, 0.5), labels)
    result = _invoke("--host-scores", h, "--device-scores", d, "--report", tmp_path / "r", "--no-plots")
    assert result.exit_code == 1
    assert "every device score is 0.5: an AUROC of 50 from ties alone, which means nothing" in result.output


@pytest.mark.parametrize("scale, offset", [(1e-3, 0.0), (1.0, 2.0), (1e3, 0.0)])
def test_rows_in_another_order_change_nothing(tmp_path, scale, offset):
    """The device's file lists the same rows in another order (a board that scored its folder its own way): the same
    verdict and the same counts as the file in the host's order."""
    labels, x = _scores(4, 1.0)
    host = scale * (offset + x)
    device = host * (1 + 1e-4 * np.random.default_rng(5).normal(size=host.size)) + scale
    paths = [f"part/{i:03d}.png" for i in range(host.size)]
    order = np.random.default_rng(6).permutation(host.size)
    h = _write(tmp_path / "host.csv", host, labels)
    same = _write(tmp_path / "same.csv", device, labels)
    moved = _write(tmp_path / "moved.csv", device[order], labels[order], paths=[paths[i] for i in order])
    results = []
    for name, path in (("same", same), ("moved", moved)):
        done = _invoke("--host-scores", h, "--device-scores", path, "--report", tmp_path / name, "--no-plots")
        assert done.exit_code == 0, done.output
        data = json.loads((tmp_path / name / "fidelity.json").read_text())
        results.append((data["verdict"], data["mean"]["near_ties"], data["gate_drift"]))
    assert results[0] == results[1]


def test_a_quantised_device_file_is_judged_as_one(tmp_path):
    """The device file's header says w8a8 (the QNN runners write '# precision:'): every score above a ceiling clipped
    to it is judged with eps = 0, not with FP16's near-ties; so is '# runner: qnn-htp w8a8'; an fp16 file is not."""
    labels, host = _scores(7, 1.0)
    device = np.minimum(host, np.percentile(host, 70))
    h = _write(tmp_path / "host.csv", host, labels)
    quantised = _write(tmp_path / "w8a8.csv", device, labels, header=("bench: mine", "precision: w8a8"))
    done = _invoke("--host-scores", h, "--device-scores", quantised, "--report", tmp_path / "q", "--no-plots")
    assert done.exit_code == 1, done.output
    data = json.loads((tmp_path / "q" / "fidelity.json").read_text())
    assert data["error_model"]["epsilon"] == 0 and data["error_model"]["precision"] == "w8a8"
    assert data["mean"]["near_ties"] == 0 and any("precision w8a8" in n for n in data["notes"])
    as_runner = _write(tmp_path / "runner.csv", device, labels, header=("bench: mine", "runner: qnn-htp w8a8"))
    done = _invoke("--host-scores", h, "--device-scores", as_runner, "--report", tmp_path / "r", "--no-plots")
    assert done.exit_code == 1 and json.loads((tmp_path / "r" / "fidelity.json").read_text())["error_model"]["epsilon"] == 0
    fp16 = _write(tmp_path / "fp16.csv", host.astype(np.float16).astype(np.float64), labels,
                  header=("bench: mine", "precision: fp16"))
    done = _invoke("--host-scores", h, "--device-scores", fp16, "--report", tmp_path / "f", "--no-plots")
    assert done.exit_code == 0 and json.loads((tmp_path / "f" / "fidelity.json").read_text())["error_model"]["epsilon"] > 0
