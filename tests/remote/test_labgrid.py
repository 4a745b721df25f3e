"""A labgrid place as a board: a coordinator and an exporter started on 127.0.0.1, a place whose NetworkService is the
loopback sshd; ``score --remote lg:PLACE`` acquires it, reaches the board through ssh, and releases it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from edgedeploy.cli import main
from edgedeploy.runtime.scorefile import read_scores


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

pytest.importorskip("labgrid", reason="labgrid is not installed (pip install 'edgedeploy[labgrid]')")


def _labgrid(module: str, *args: str, **kw):
    return [sys.executable, "-c", f"from labgrid.remote.{module} import main; main()", *args]


def _client(coordinator: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_labgrid("client", "-x", coordinator, *args), capture_output=True, text=True, timeout=60)


@pytest.fixture
def lab(sshd, tmp_path):
    port = free_port()
    coordinator = f"127.0.0.1:{port}"
    exports = tmp_path / "exporter.yaml"
    import getpass

    exports.write_text(f"board:\n  NetworkService:\n    address: 127.0.0.1\n    username: {getpass.getuser()}\n"
                       f"    port: {sshd.port}\n")
    state = tmp_path / "coordinator"  # the coordinator keeps places.yaml and resources.yaml in its working folder
    state.mkdir()
    procs = [subprocess.Popen(_labgrid("coordinator", "-l", coordinator), stdout=subprocess.DEVNULL, cwd=state,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)]
    try:
        time.sleep(1.0)
        procs.append(subprocess.Popen(_labgrid("exporter", "-c", coordinator, "-n", "exp1", str(exports)), cwd=state,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        end = time.monotonic() + 60
        while "exp1/board/NetworkService" not in _client(coordinator, "resources").stdout:
            if time.monotonic() > end:
                pytest.skip("the labgrid exporter did not register with the coordinator on loopback")
            time.sleep(0.5)
        for args in (("-p", "bench-board", "create"), ("-p", "bench-board", "add-match", "exp1/board/NetworkService")):
            done = _client(coordinator, *args)
            assert done.returncode == 0, done.stderr
        yield coordinator
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_labgrid_place_is_acquired_used_and_released(sshd, lab, small_build, tiny_bench, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(sshd.config.read_text() + f"""
Host 127.0.0.1
  IdentityFile {sshd.folder / 'userkey'}
  IdentitiesOnly yes
  UserKnownHostsFile {sshd.known_hosts}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
""")
    out = tmp_path / "s.csv"
    done = CliRunner().invoke(main, ["score", "--model", str(small_build.bundle_dir / "model.onnx"), "--bench", "mvtec",
                                     "--data-root", str(tiny_bench), "--categories", "bottle", "--out", str(out),
                                     "--remote", "lg:bench-board", "--labgrid-coordinator", lab, "--ssh-config",
                                     str(config), "--remote-venv", str(sshd.venv), "--remote-dir",
                                     str(tmp_path / "runs")], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert "labgrid: acquired place bench-board" in done.stderr and "labgrid: released place bench-board" in done.stderr
    table = read_scores(out)
    assert len(table.rows) == 24 and table.meta["board"] == "lg:bench-board"
    shown = _client(lab, "-p", "bench-board", "show").stdout
    assert "acquired: None" in shown  # given back for the next user


def test_labgrid_place_without_a_coordinator_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("LG_COORDINATOR", raising=False)
    done = CliRunner().invoke(main, ["fidelity", "--bench", "demo", "--target", "rb5-gen2", "--remote", "lg:p"],
                              catch_exceptions=False)
    assert done.exit_code == 2 and "--labgrid-coordinator HOST:PORT or $LG_COORDINATOR" in done.output
