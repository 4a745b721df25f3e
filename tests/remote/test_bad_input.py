"""Bad input and broken boards, each one line with the documented exit code, against the real loopback sshd.

The remote without edgedeploy, a version mismatch, an unwritable remote folder, an unknown host key, a host that
refuses connections, one that never answers (a timeout, never a hang), a Jetson bundle sent to a board that is not a
Jetson (refused after the fingerprint, before any copy), options that contradict ``--remote``.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgedeploy.cli import main

SMALL = "edgezsad-tinyvit5m-224"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def score_remote(sshd, small_build, tiny_bench, tmp_path, *extra, remote="board1", venv=None, config=None):
    return invoke("score", "--model", small_build.bundle_dir / "model.onnx", "--bench", "mvtec", "--data-root",
                  tiny_bench, "--categories", "bottle", "--out", tmp_path / "s.csv", "--remote", remote,
                  "--ssh-config", config or sshd.config, "--remote-venv", venv or sshd.venv, *extra)


def one_error(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_options_that_contradict_remote(tmp_path):
    device = tmp_path / "device.csv"
    device.write_text("# edgedeploy-scores: 1\npath,category,label,score\n")
    done = invoke("fidelity", "--bench", "demo", "--target", "rb5-gen2", "--remote", "board1", "--device-scores", device)
    assert done.exit_code == 2 and "--remote and --device-scores contradict each other" in one_error(done)
    done = invoke("fidelity", "--bench", "demo", "--target", "rb5-gen2", "--remote", "board1", "--device", "onnx")
    assert done.exit_code == 2 and "the board is the device" in one_error(done)
    done = invoke("fidelity", "--bench", "demo", "--target", "rb5-gen2", "--remote", "board1", "--shard")
    assert done.exit_code == 2 and "several boards" in one_error(done)
    done = invoke("fidelity", "--bench", "demo", "--target", "rb5-gen2", "--ssh-config", device)
    assert done.exit_code == 2 and "--ssh-config applies to --remote only" in done.output
    done = invoke("fidelity", "--bench", "demo", "--target", "rb5-gen2", "--remote", "-oProxyCommand=touch /tmp/x")
    assert done.exit_code == 2 and "is not a host ssh takes" in one_error(done)
    done = invoke("fidelity", "--bench", "demo", "--target", "rb5-gen2", "--remote", "a,,b")
    assert done.exit_code == 2 and "an empty name" in one_error(done)


def test_remote_without_edgedeploy(sshd, small_build, tiny_bench, tmp_path):
    done = score_remote(sshd, small_build, tiny_bench, tmp_path, "--remote-dir", tmp_path / "runs",
                        venv=tmp_path / "no venv here")
    assert done.exit_code == 2
    line = one_error(done)
    assert "board1: edgedeploy is not installed there" in line and "pip install" in line and "pip wheel" in line


def test_version_mismatch_is_refused_with_the_install_command(sshd, small_build, tiny_bench, tmp_path):
    fake = tmp_path / "old venv"
    (fake / "bin").mkdir(parents=True)
    script = fake / "bin" / "edgedeploy"
    script.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "edgedeploy, version 0.0.9"; exit 0; fi\n'
                      'echo "Error: No such command \'$1\'." >&2\nexit 2\n')
    script.chmod(0o755)
    done = score_remote(sshd, small_build, tiny_bench, tmp_path, "--remote-dir", tmp_path / "runs", venv=fake)
    assert done.exit_code == 2
    line = one_error(done)
    assert "board1 runs edgedeploy 0.0.9, this host 0.1.0" in line
    assert f"{fake}/bin/pip install --force-reinstall 'edgedeploy-0.1.0-py3-none-any.whl[jetson]'" in line


def test_unwritable_remote_folder(sshd, small_build, tiny_bench, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    done = score_remote(sshd, small_build, tiny_bench, tmp_path, "--remote-dir", blocker / "runs")
    assert done.exit_code == 2
    line = one_error(done)
    assert "board1: cannot write the work folder" in line and "--remote-dir" in line
    assert blocker.read_text() == "not a folder"


def test_unknown_host_key_is_refused_with_the_line_that_adds_it(sshd, small_build, tiny_bench, tmp_path):
    done = score_remote(sshd, small_build, tiny_bench, tmp_path, "--remote-dir", tmp_path / "runs", remote="stranger")
    assert done.exit_code == 2
    line = one_error(done)
    assert "never turns host-key checking off" in line
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {sshd.folder / 'empty_known_hosts'}" in line
    assert not (tmp_path / "runs").exists()


def test_host_that_refuses_connections_is_one_line_exit_3(sshd, small_build, tiny_bench, tmp_path):
    done = score_remote(sshd, small_build, tiny_bench, tmp_path, "--remote-dir", tmp_path / "runs", remote="deadboard")
    assert done.exit_code == 3
    assert "deadboard: ssh cannot reach 127.0.0.1 port" in one_error(done)


def test_host_that_never_answers_times_out(sshd, small_build, tiny_bench, tmp_path):
    """A listener that accepts and then says nothing (no SSH banner): a timeout, never a hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    held, stop = [], threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    config = tmp_path / "ssh_config"
    config.write_text(f"Host silent\n  HostName 127.0.0.1\n  Port {port}\n  UserKnownHostsFile {sshd.known_hosts}\n"
                      "  StrictHostKeyChecking yes\n")
    try:
        start = time.monotonic()
        done = score_remote(sshd, small_build, tiny_bench, tmp_path, "--remote-dir", tmp_path / "runs",
                            "--connect-timeout", "2", remote="silent", config=config)
        seconds = time.monotonic() - start
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in held:
            conn.close()
        server.close()
    assert done.exit_code == 3, done.output
    assert "silent: ssh cannot reach 127.0.0.1 port" in one_error(done) and "within 2s" in one_error(done)
    assert seconds < 30


@pytest.fixture(scope="session")
def jetson_bundle(small_build, small_recipe) -> Path:
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.host.pipeline import build

    return build(small_recipe, load_profile("jetson-orin-nano"), small_build.bundle_dir.parent,
                 log=lambda line: None).bundle_dir


def test_jetson_bundle_on_a_board_that_is_not_a_jetson(sshd, jetson_bundle, tiny_bench, tmp_path):
    runs = tmp_path / "runs"
    done = invoke("fidelity", "--bench", "mvtec", "--data-root", tiny_bench, "--target", "jetson-orin-nano", "--recipe",
                  SMALL, "--host", "onnx", "--out", jetson_bundle.parent, "--report", tmp_path / "report", "--no-plots",
                  "--remote", "board1", "--ssh-config", sshd.config, "--remote-venv", sshd.venv, "--remote-dir", runs)
    assert done.exit_code == 2, done.output
    line = one_error(done)
    assert "board1 is not a Jetson" in line and "--runtime onnxruntime" in line
    assert "[board1] x86_64 machine" in done.stderr  # refused after the fingerprint ...
    assert not list(runs.glob("run-*/bundle"))       # ... and before any copy
    done = invoke("engine", "build", jetson_bundle, "--remote", "board1", "--ssh-config", sshd.config,
                  "--remote-venv", sshd.venv, "--remote-dir", runs)
    assert done.exit_code == 2 and "board1 is not a Jetson" in one_error(done)
    assert not (jetson_bundle / "model.engine").exists()


def test_runtime_of_another_target_is_refused(sshd, small_build, tiny_bench, tmp_path):
    done = invoke("fidelity", "--bench", "mvtec", "--data-root", tiny_bench, "--target", "rb5-gen2", "--recipe", SMALL,
                  "--host", "onnx", "--out", small_build.bundle_dir.parent, "--report", tmp_path / "report",
                  "--remote", "board1", "--runtime", "tensorrt", "--ssh-config", sshd.config, "--remote-venv",
                  sshd.venv, "--remote-dir", tmp_path / "runs")
    assert done.exit_code == 2 and "--runtime tensorrt needs a Jetson bundle" in one_error(done)
    done = invoke("fidelity", "--bench", "mvtec", "--data-root", tiny_bench, "--target", "rb5-gen2", "--recipe", SMALL,
                  "--host", "onnx", "--out", small_build.bundle_dir.parent, "--report", tmp_path / "report",
                  "--remote", "board1", "--ssh-config", sshd.config, "--remote-venv", sshd.venv,
                  "--remote-dir", tmp_path / "runs")  # the bundle's own runtime: QNN GPU, which needs the RB5 Gen2
    assert done.exit_code == 2 and "board1 is not a Qualcomm board (RB5 Gen2)" in one_error(done)


def test_bundle_holding_another_graph_is_refused_not_overwritten(small_build, tiny_bench, tmp_path):
    import json
    import shutil

    out = tmp_path / "out"
    shutil.copytree(small_build.bundle_dir.parent, out)
    manifest_path = out / "rb5-gen2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    done = invoke("fidelity", "--bench", "mvtec", "--data-root", tiny_bench, "--target", "rb5-gen2", "--recipe", SMALL,
                  "--host", "onnx", "--out", out, "--report", tmp_path / "report", "--remote", "board1",
                  "--runtime", "onnxruntime")
    assert done.exit_code == 2
    assert "holds another graph (0000000000000000) than this run's" in one_error(done)
    assert json.loads(manifest_path.read_text())["model"]["sha256"] == "0" * 64
