"""The remote pieces without a board: quoting, ssh's failures in one line, the agent's file operations, inventories,
shards, the fingerprint's fields and the runtime rules."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.data.benchmarks import Benchmark, Sample
from edgedeploy.remote import fingerprint
from edgedeploy.remote.agent import MARKER, RESULT, AgentError, inside, remote_agent
from edgedeploy.remote.fleet import assign_shards
from edgedeploy.remote.inventory import InventoryError, load_inventory, resolve_boards, split_hosts
from edgedeploy.remote.options import RemoteOptions
from edgedeploy.remote.session import (Board, check_board_fits, check_runtime_present, resolve_runtime)
from edgedeploy.remote.transport import (RemoteError, RemoteSetupError, SshTarget, check_host, home_path,
                                         remote_command)


def test_remote_command_quotes_every_word_for_sh():
    words = ["/opt/my venv/bin/edgedeploy", "remote-agent", "hello", "--root", "it's \"x\" $HOME; rm -rf /", "`id`"]
    line = remote_command(words)
    assert shlex.split(line) == words
    echoed = subprocess.run(["sh", "-c", "printf '%s\\n' " + remote_command(words[3:])], capture_output=True,
                            text=True).stdout.splitlines()
    assert echoed == words[3:]  # a shell gives back the words exactly: nothing expanded, nothing split


def test_home_path_expands_only_a_leading_tilde():
    assert subprocess.run(["sh", "-c", "printf %s " + home_path("~/my venv")], capture_output=True, text=True,
                          env={"HOME": "/home/u"}).stdout == "/home/u/my venv"
    assert home_path("/a/~/b") == shlex.quote("/a/~/b")


def test_ssh_argv_batchmode_timeouts_and_no_host_key_relaxing(tmp_path):
    config = tmp_path / "c"
    config.write_text("")
    argv = SshTarget("user@jetson", config, connect_timeout=7, port=2222).ssh_argv()
    assert argv[:3] == ["ssh", "-F", str(config)]
    assert "BatchMode=yes" in argv and "ConnectTimeout=7" in argv and "ServerAliveInterval=5" in argv
    assert argv[-2:] == ["--", "user@jetson"] and "-p" in argv
    assert not any("StrictHostKeyChecking" in a or "UserKnownHostsFile" in a for a in argv)


@pytest.mark.parametrize("host", ["-oProxyCommand=x", "a b", "host;id", "", "$(id)"])
def test_hosts_that_could_be_options_or_shell_are_refused(host):
    with pytest.raises(EdgeDeployError):
        check_host(host)


@pytest.mark.parametrize("stderr, cls, words", [
    ("Host key verification failed.", RemoteSetupError, "ssh-keyscan"),
    ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", RemoteSetupError, "CHANGED"),
    ("root@127.0.0.1: Permission denied (publickey).", RemoteSetupError, "ssh-copy-id"),
    ("ssh: connect to host 10.0.0.9 port 22: Connection refused", RemoteError, "cannot reach"),
    ("Connection timed out during banner exchange", RemoteError, "cannot reach"),
    ("Timeout, server 10.0.0.9 not responding.", RemoteError, "resume"),
    ("ssh: Could not resolve hostname nope: Name or service not known", RemoteError, "resolve"),
])
def test_ssh_failures_become_one_line(stderr, cls, words):
    target = SshTarget("board", connect_timeout=3)
    target._resolved = {"hostname": "10.0.0.9", "port": "22", "userknownhostsfile": "/k/known_hosts"}
    error = target.ssh_failure(stderr, "scoring")
    assert isinstance(error, cls) and words in str(error) and "\n" not in str(error)
    assert error.exit_code == (2 if cls is RemoteSetupError else 3)


def test_agent_names_stay_inside_the_work_folder(tmp_path):
    assert inside(tmp_path, "inputs/part-0000.npy") == tmp_path / "inputs" / "part-0000.npy"
    for bad in ("../x", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(AgentError):
            inside(tmp_path, bad)


def _agent(*args, stdin: bytes = b""):
    return CliRunner().invoke(remote_agent, list(args), input=stdin, catch_exceptions=False)


def test_agent_put_get_stat_and_clean(tmp_path):
    root = str(tmp_path / "runs dir")
    hello = _agent("hello", "--root", root, "--run", "run-1", "inputs/a.bin")
    info = json.loads(hello.stdout.split(RESULT, 1)[1])
    assert info["workdir_error"] is None and info["files"] == {"inputs/a.bin": None}
    folder = Path(info["workdir"])
    assert (folder / MARKER).is_file()
    data = b"x" * 5000
    good = {"name": "inputs/a.bin", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    bad = {"name": "inputs/b.bin", "bytes": len(data), "sha256": "0" * 64}
    done = _agent("put", "--root", root, "--run", "run-1",
                  stdin=(json.dumps({"files": [good, bad]}) + "\n").encode() + data + data)
    assert done.exit_code == 3 and "the copy was cut; nothing of it was kept" in done.stderr
    assert (folder / "inputs" / "a.bin").read_bytes() == data
    assert not (folder / "inputs" / "b.bin").exists()
    assert not [p for p in (folder / "inputs").iterdir() if p.name.startswith(".")]  # no partial file left
    cut = _agent("put", "--root", root, "--run", "run-1",
                 stdin=(json.dumps({"files": [{**good, "name": "inputs/c.bin"}]}) + "\n").encode() + data[:100])
    assert cut.exit_code == 3 and not (folder / "inputs" / "c.bin").exists()
    stat = json.loads(_agent("stat", "--root", root, "--run", "run-1", "inputs/a.bin").stdout.split(RESULT, 1)[1])
    assert stat["files"]["inputs/a.bin"]["sha256"] == good["sha256"]
    got = _agent("get", "--root", root, "--run", "run-1", "inputs/a.bin").stdout_bytes
    header, _, body = got.partition(b"\n")
    assert json.loads(header)["files"][0]["bytes"] == len(data) and body == data
    assert _agent("get", "--root", root, "--run", "run-1", "../etc").exit_code == 2
    stranger = tmp_path / "runs dir" / "run-2"
    stranger.mkdir()
    refused = _agent("clean", "--root", root, "--run", "run-2")
    assert refused.exit_code == 2 and stranger.is_dir()  # not made by the agent: never removed
    assert _agent("clean", "--root", root, "--run", "run-1").exit_code == 0 and not folder.exists()


def test_inventory_file(tmp_path):
    path = tmp_path / "boards.yaml"
    path.write_text("ssh_config: fleet.conf\nboards:\n  j1:\n    host: nvidia@j1\n    port: 2222\n    venv: ~/v\n"
                    "  r1:\n    host: rb5\n    remote_dir: /data/runs\n  lab:\n    labgrid: place-7\n")
    (tmp_path / "fleet.conf").write_text("")
    boards, config = load_inventory(path)
    assert set(boards) == {"j1", "r1", "lab"} and config == (tmp_path / "fleet.conf").resolve()
    picked = resolve_boards(RemoteOptions(remote="r1,j1,extra", inventory=path))
    assert [b.name for b in picked] == ["r1", "j1", "extra"]
    assert picked[1].target.port == 2222 and picked[1].venv == "~/v" and picked[0].remote_dir == "/data/runs"
    assert picked[2].target.host == "extra" and picked[2].target.ssh_config == config
    for text, words in (("boards: []\n", "boards:"), ("boards:\n  a:\n    hots: x\n", "unknown field"),
                        ("boards:\n  a:\n    host: x\n    labgrid: y\n", "exactly one"), ("nodes: 1\n", "boards:")):
        path.write_text(text)
        with pytest.raises(InventoryError, match=words):
            load_inventory(path)
    with pytest.raises(InventoryError, match="twice"):
        split_hosts("a,b,a")


def _bench(counts: dict[str, int]) -> Benchmark:
    samples = tuple(Sample(Path(f"{c}/{i}.png"), f"{c}/{i}.png", c, i % 2, "good" if i % 2 == 0 else "x", None)
                    for c, n in sorted(counts.items()) for i in range(n))
    return Benchmark("mvtec", Path("."), samples)


def test_shards_balance_categories_largest_first():
    boards = [Board(SshTarget(n)) for n in ("a", "b")]
    plan = assign_shards(_bench({"big": 100, "mid": 60, "small": 50, "tiny": 10}), boards)
    assert [(b.name, part.categories) for b, part in plan] == [("a", ["big", "tiny"]), ("b", ["mid", "small"])]
    plan = assign_shards(_bench({"only": 4}), boards)
    assert plan[1][1] is None  # more boards than categories: said, not an error


def test_fingerprint_fields_are_clean_and_hold_no_environment(monkeypatch):
    monkeypatch.setenv("EDGEDEPLOY_TEST_TOKEN", "s3cr3t-value")
    fp = fingerprint.collect()
    assert fp["edgedeploy"] and fp["python"] and fp["kind"] in ("jetson", "qualcomm", "other")
    assert not any("s3cr3t" in v for v in fp.values())
    assert set(fp) <= set(fingerprint.FIELDS)
    fields = fingerprint.header_fields({"model": "NVIDIA Jetson\nOrin\x00 Nano", "power_mode": "x" * 500}, "j1")
    assert fields["board_model"] == "NVIDIA Jetson Orin Nano" and len(fields["board_power_mode"]) == 160
    assert fingerprint.from_header({"board_model": "m", "runner": "r"}) == {"model": "m"}


def test_board_kind_and_clock_warning():
    assert fingerprint.board_kind("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", None, None) == \
        "jetson"
    assert fingerprint.board_kind("Qualcomm Technologies, Inc. QCS8550", None, "Qualcomm Linux 1.2") == "qualcomm"
    assert fingerprint.board_kind(None, None, "Debian GNU/Linux 12") == "other"
    assert fingerprint.clock_warning({"clocks_locked": "yes"}, "j") is None
    line = fingerprint.clock_warning({"clocks_locked": "no", "kind": "jetson"}, "j")
    assert "not locked" in line and "jetson_clocks" in line and "\n" not in line


def test_runtime_rules():
    jetson, rb5 = {"name": "jetson-orin-nano", "runtime": "tensorrt"}, \
        {"name": "rb5-gen2", "runtime": "qnn", "build": {"compute_unit": "gpu"}}
    assert resolve_runtime(None, jetson) == "tensorrt" and resolve_runtime("bundle", rb5) == "qnn-gpu"
    assert resolve_runtime("onnxruntime", rb5) == "onnxruntime"
    assert check_board_fits("j", {"kind": "jetson"}, jetson, "tensorrt") == []
    with pytest.raises(RemoteSetupError, match="is not a Jetson"):
        check_board_fits("q", {"kind": "qualcomm"}, jetson, "tensorrt")
    with pytest.raises(RemoteSetupError, match="needs a rb5-gen2 bundle"):
        check_board_fits("q", {"kind": "qualcomm"}, jetson, "qnn-gpu")
    assert "was not used" in check_board_fits("x", {"kind": "other"}, jetson, "onnxruntime")[0]
    emulated = check_board_fits("x", {"kind": "other", "arch": "x86_64", "onnxruntime_qnn": "2.7.0"}, rb5, "qnn-htp")
    assert "emulated" in emulated[0]
    check_runtime_present("j", {"tensorrt": "10.3.0"}, "tensorrt")
    with pytest.raises(RemoteSetupError, match="nothing falls back"):
        check_runtime_present("j", {"tensorrt": None, "onnxruntime": "1.20"}, "tensorrt")
    with pytest.raises(RemoteSetupError, match="onnxruntime-qnn"):
        check_runtime_present("q", {"qnn": None}, "qnn-gpu")


def test_transport_streams_stdin_from_a_writer(tmp_path):
    """``run`` feeds a writer function into the pipe (the put of several files): checked with a local stand-in."""
    target = SshTarget("localhost")
    target.ssh_argv = lambda tty=False: ["sh", "-c", 'cat > "$0"']  # the remote command becomes $0
    out = tmp_path / "got"
    done = target.run([str(out)], stdin=lambda pipe: pipe.write(b"abc" * 1000))
    assert done.returncode == 0 and out.read_bytes() == b"abc" * 1000
