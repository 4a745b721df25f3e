"""``fidelity --remote`` / ``score --remote`` against a real sshd on 127.0.0.1 and a core-only "board" venv.

One board: checks, copy, score, fetch, gate, the fingerprint in the header and the report, a re-run that copies and
scores nothing, ``--remote-clean``, a connection killed while scoring and then resumed without rescoring. A fleet: two
boards side by side with their agreement, a board that refuses connections, ``--shard``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edgedeploy.cli import main
from edgedeploy.remote.fingerprint import FIELDS
from edgedeploy.runtime.scorefile import read_scores

SMALL = "edgezsad-tinyvit5m-224"


def fidelity(sshd, out: Path, bench: Path, report: Path, remote_dir: Path, *extra, remote: str = "board1"):
    args = ["fidelity", "--bench", "mvtec", "--data-root", bench, "--target", "rb5-gen2", "--recipe", SMALL,
            "--host", "onnx", "--out", out, "--report", report, "--no-plots", "--remote", remote,
            "--runtime", "onnxruntime", "--ssh-config", sshd.config, "--remote-venv", sshd.venv,
            "--remote-dir", remote_dir, *extra]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run_folders(remote_dir: Path) -> list[Path]:
    return sorted(p for p in Path(remote_dir).glob("run-*") if p.is_dir())


def test_fidelity_on_the_board_passes_and_records_the_board(sshd, built_out, tiny_bench, tmp_path):
    remote_dir, report = tmp_path / "board-runs", tmp_path / "report"
    first = fidelity(sshd, built_out, tiny_bench, report, remote_dir)
    assert first.exit_code == 0, first.output
    assert "PASS" in first.stdout and "board: board1 (onnxruntime)" in first.stdout
    assert "[board1] 48 images: 0 from the board's cache, 48 scored" in first.stderr
    assert "clocks not known to be locked" in first.stderr

    fetched = report / "remote" / "board1.csv"
    table = read_scores(fetched)
    assert len(table.rows) == 48 and table.meta["board"] == "board1" and table.meta["remote_runtime"] == "onnxruntime"
    board_keys = {k[len("board_"):] for k in table.meta if k.startswith("board_")}
    assert {"arch", "python", "edgedeploy", "onnxruntime", "clocks_locked", "kind"} <= board_keys <= set(FIELDS)
    assert table.meta["board_edgedeploy"] == "0.1.0" and table.meta["target"] == "rb5-gen2"
    assert float(table.meta["latency_ms_p50"]) > 0
    assert (report / "remote" / "board1.maps.npz").is_file()  # pixel metrics from the board's maps

    data = json.loads((report / "fidelity.json").read_text())
    assert data["passed"] and data["board"]["name"] == "board1"
    assert data["board"]["fingerprint"]["python"] and data["board"]["fingerprint"]["kind"] == "other"
    assert any("own runtime (qnn) was not used" in note for note in data["notes"])
    assert "pixel_auroc" in data["mean"]["device_metrics"]
    md = (report / "fidelity.md").read_text()
    assert "## The board" in md and "| onnxruntime |" in md and md.index("## The board") < md.index("## The rule")

    # everything written on the board is inside the one run folder
    (folder,) = run_folders(remote_dir)
    assert sorted(p.name for p in remote_dir.iterdir()) == [folder.name]
    assert {"bundle", "inputs", "cache", "scores-onnxruntime.csv", ".edgedeploy-run"} <= {p.name for p in folder.iterdir()}

    again = fidelity(sshd, built_out, tiny_bench, report, remote_dir, "--remote-clean")
    assert again.exit_code == 0, again.output
    assert "copying 0.0 MiB (0 file(s)" in again.stderr
    assert "48 images: 48 from the board's cache, 0 scored" in again.stderr
    assert "--remote-clean: removed" in again.stderr and run_folders(remote_dir) == []


def test_acceptance_command_through_the_console_script(sshd, built_out, tiny_bench, tmp_path):
    """The issue's command, as a user types it (the edgedeploy console script, an ssh config alias)."""
    import subprocess
    import sys

    report = tmp_path / "report"
    cmd = [sys.executable, "-m", "edgedeploy.cli", "fidelity", "--bench", "mvtec", "--data-root", str(tiny_bench),
           "--categories", "bottle", "--target", "rb5-gen2", "--recipe", SMALL, "--remote", "board1", "--runtime",
           "onnxruntime", "--ssh-config", str(sshd.config), "--remote-venv", str(sshd.venv), "--remote-dir",
           str(tmp_path / "runs"), "--out", str(built_out), "--report", str(report), "--host", "onnx", "--no-plots"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PASS" in done.stdout
    assert json.loads((report / "fidelity.json").read_text())["board"]["fingerprint"]["edgedeploy"] == "0.1.0"


def _chunk_entries(remote_dir: Path) -> list[str]:
    shas = []
    for chunk in remote_dir.glob("run-*/cache/scores/*/chunk-*.npz"):
        with np.load(chunk) as data:
            shas += [str(s) for s in data["sha"]]
    return shas


def test_connection_killed_while_scoring_resumes_without_rescoring(sshd, built_out, tiny_bench, tmp_path):
    remote_dir, report = tmp_path / "runs", tmp_path / "report"
    killed = threading.Event()

    def kill_when_scoring() -> None:
        end = time.monotonic() + 240
        while time.monotonic() < end and not killed.is_set():
            if _chunk_entries(remote_dir):  # the first batch is cached on the board: drop the link now
                if sshd.drop_connections():
                    killed.set()
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_when_scoring, daemon=True)
    watcher.start()
    first = fidelity(sshd, built_out, tiny_bench, report, remote_dir)
    watcher.join(timeout=5)
    assert killed.is_set(), "the test did not manage to drop the connection"
    assert first.exit_code == 3, first.output
    error = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "board1" in error[0] and "run the same command again to resume" in error[0]

    second = fidelity(sshd, built_out, tiny_bench, report, remote_dir)
    assert second.exit_code == 0, second.output
    match = re.search(r"\[board1\] 48 images: (\d+) from the board's cache, (\d+) scored", second.stderr)
    assert match, second.stderr
    cached, scored = int(match.group(1)), int(match.group(2))
    assert cached >= 16 and scored < 48 and cached + scored == 48
    shas = _chunk_entries(remote_dir)
    assert len(shas) == len(set(shas)) == 48, "an image was scored twice"
    assert len(read_scores(report / "remote" / "board1.csv").rows) == 48


def _inventory(tmp_path: Path, sshd, boards: dict[str, str]) -> Path:
    lines = ["boards:"]
    for name, host in boards.items():
        lines += [f"  {name}:", f"    host: {host}", f"    remote_dir: {tmp_path / ('runs-' + name)}"]
    path = tmp_path / "boards.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fleet_of_two_boards_side_by_side_with_agreement(sshd, built_out, tiny_bench, tmp_path):
    inventory = _inventory(tmp_path, sshd, {"board1": "board1", "board2": "board2"})
    report = tmp_path / "report"
    done = fidelity(sshd, built_out, tiny_bench, report, tmp_path / "unused", "--inventory", inventory,
                    remote="board1,board2")
    assert done.exit_code == 0, done.output
    fleet = json.loads((report / "fleet.json").read_text())
    assert [b["name"] for b in fleet["boards"]] == ["board1", "board2"]
    assert all(b["ok"] and b["passed"] and b["scored"] == 48 for b in fleet["boards"])
    assert all(b["fingerprint"]["python"] for b in fleet["boards"])
    (pair,) = fleet["agreement"]
    assert (pair["a"], pair["b"], pair["passed"]) == ("board1", "board2", True)
    md = (report / "fleet.md").read_text()
    assert "| board1 | PASS | onnxruntime |" in md and "| board2 | PASS | onnxruntime |" in md
    assert "board1 vs board2 | AGREE" in md
    assert "board1 vs board2" in done.stdout and "AGREE" in done.stdout
    for name in ("board1", "board2"):  # each board's own report, with its fingerprint
        assert json.loads((report / "boards" / name / "fidelity.json").read_text())["board"]["name"] == name
        assert len(run_folders(tmp_path / f"runs-{name}")) == 1
    assert not (tmp_path / "unused").exists()


def test_fleet_board_that_refuses_connections_is_named_and_the_other_finishes(sshd, built_out, tiny_bench, tmp_path):
    report = tmp_path / "report"
    done = fidelity(sshd, built_out, tiny_bench, report, tmp_path / "runs", "--categories", "bottle",
                    remote="board1,deadboard")
    assert done.exit_code == 3, done.output
    assert re.search(r"error: board deadboard failed: deadboard: ssh cannot reach 127\.0\.0\.1 port \d+", done.stderr)
    fleet = json.loads((report / "fleet.json").read_text())
    good, dead = fleet["boards"]
    assert good["name"] == "board1" and good["ok"] and good["passed"]
    assert dead["name"] == "deadboard" and not dead["ok"] and "cannot reach" in dead["error"]
    assert "| deadboard | FAILED |" in (report / "fleet.md").read_text()


def test_shard_splits_the_categories_and_gates_them_as_one_device(sshd, built_out, tiny_bench, tmp_path):
    inventory = _inventory(tmp_path, sshd, {"board1": "board1", "board2": "board2"})
    report = tmp_path / "report"
    done = fidelity(sshd, built_out, tiny_bench, report, tmp_path / "unused", "--inventory", inventory, "--shard",
                    remote="board1,board2")
    assert done.exit_code == 0, done.output
    fleet = json.loads((report / "fleet.json").read_text())
    assert [b["categories"] for b in fleet["boards"]] == [["bottle"], ["screw"]]
    assert [b["scored"] for b in fleet["boards"]] == [24, 24]
    assert fleet["merged"]["passed"]
    merged = json.loads((report / "fidelity.json").read_text())
    assert merged["shards"] == {"board1": ["bottle"], "board2": ["screw"]}
    table = read_scores(next((report / "remote").glob("merged-*.csv")))
    assert len(table.rows) == 48 and table.meta["shards"] == "board1=bottle; board2=screw"


def test_score_remote_with_spaces_and_quotes_in_paths(sshd, small_build, tiny_bench, tmp_path):
    """Every remote word is quoted: a venv path and a work folder with spaces, quotes and a $ work as they are."""
    venv = tmp_path / "board's venv (1)"
    venv.symlink_to(sshd.venv)
    remote_dir = tmp_path / 'it\'s a "dir" $HOME'
    out = tmp_path / "out dir" / "s.csv"
    done = CliRunner().invoke(main, ["score", "--model", str(small_build.bundle_dir / "model.onnx"), "--bench", "mvtec",
                                     "--data-root", str(tiny_bench), "--categories", "bottle", "--out", str(out),
                                     "--remote", "board1", "--ssh-config", str(sshd.config), "--remote-venv",
                                     str(venv), "--remote-dir", str(remote_dir)], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert "board board1" in done.stdout
    table = read_scores(out)
    assert len(table.rows) == 24 and table.meta["runner"] == "onnxruntime-cpu" and table.meta["board_python"]
    assert not (tmp_path / "out dir" / "s.maps.npz").exists()  # no --save-maps
    assert len(run_folders(remote_dir)) == 1  # the literal name: no $HOME expanded, no word split
