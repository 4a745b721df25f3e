"""A real board in the loop, on this machine: an ``sshd`` started on 127.0.0.1 (a free port, a host key and a user key
made for the session) in front of a second virtual environment with the core install only (no torch), built from a
wheel of this checkout as ``.ci/core_only`` builds it.

Tests that need them skip, with the reason, where ``sshd`` is missing or cannot start, or the venv cannot be made.
Traffic stays on the loopback address. The test's own ssh config (``ssh_config``) pins the host key in its own
known_hosts file with ``StrictHostKeyChecking yes``: nothing here turns host-key checking off.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT_DIR = Path(__file__).resolve().parents[2]

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def board_venv(tmp_path_factory) -> Path:
    """The "board": a venv with this checkout's wheel and its core dependencies only (no torch)."""
    work = tmp_path_factory.mktemp("board")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
                            str(PROJECT_DIR)], capture_output=True, text=True)
    wheels = list((work / "dist").glob("edgedeploy-*.whl"))
    if built.returncode != 0 or not wheels:
        pytest.skip(f"cannot build the wheel for the board venv: {built.stderr.strip()[-300:]}")
    venv = work / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make the board venv: {made.stderr.strip()[-300:]}")
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])],
                               capture_output=True, text=True)
    if installed.returncode != 0:
        pytest.skip(f"cannot install the core into the board venv (a package index is needed): "
                    f"{installed.stderr.strip()[-300:]}")
    heavy = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert heavy.returncode != 0, "the board venv must not have torch"
    return venv


@dataclass
class Sshd:
    port: int
    pid: int
    folder: Path
    config: Path          # the test's ssh config: aliases board1, board2, stranger, deadboard
    known_hosts: Path
    venv: Path

    def children(self) -> list[int]:
        """The per-connection sshd processes (the session's, not the listener)."""
        tree: dict[int, list[int]] = {}
        names: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
            names[int(entry.name)] = name
        found, todo = [], list(tree.get(self.pid, []))
        while todo:
            pid = todo.pop()
            if names.get(pid, "").startswith("sshd"):
                found.append(pid)
            todo += tree.get(pid, [])
        return found

    def drop_connections(self) -> int:
        """Kill every open connection (its sshd processes), as a network failure would."""
        pids = self.children()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory, board_venv) -> Sshd:
    daemon = shutil.which("sshd", path=SBIN)
    if daemon is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH (sshd, ssh, ssh-keygen) is not installed: apt-get install openssh-server openssh-client")
    folder = tmp_path_factory.mktemp("sshd")
    for key in ("hostkey", "userkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    (folder / "authorized_keys").write_text((folder / "userkey.pub").read_text())
    os.chmod(folder / "userkey", 0o600)
    port = free_port()
    (folder / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {folder / 'hostkey'}
PidFile {folder / 'sshd.pid'}
AuthorizedKeysFile {folder / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel ERROR
MaxStartups 64:30:128
MaxSessions 32
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation folder, when root
    check = subprocess.run([daemon, "-t", "-f", str(folder / "sshd_config")], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"sshd cannot start here: {check.stderr.strip()[-300:]}")
    log = open(folder / "sshd.log", "w")
    proc = subprocess.Popen([daemon, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    if not _wait_port(port):
        proc.kill()
        pytest.skip(f"sshd did not listen on 127.0.0.1:{port}: {(folder / 'sshd.log').read_text()[-300:]}")
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {(folder / 'hostkey.pub').read_text()}")
    (folder / "empty_known_hosts").write_text("")
    user = getpass.getuser()
    dead = free_port()
    common = f"""  HostName 127.0.0.1
  User {user}
  IdentityFile {folder / 'userkey'}
  IdentitiesOnly yes
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
"""
    config = folder / "ssh_config"
    config.write_text(f"""Host board1 board2
  Port {port}
  UserKnownHostsFile {known}
{common}
Host stranger
  Port {port}
  UserKnownHostsFile {folder / 'empty_known_hosts'}
{common}
Host deadboard
  Port {dead}
  UserKnownHostsFile {known}
{common}
""")
    try:
        done = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "board1", "true"], capture_output=True,
                              text=True, timeout=30)
        if done.returncode != 0:
            pytest.skip(f"cannot log in to the test sshd: {done.stderr.strip()[-300:]}")
        yield Sshd(port, proc.pid, folder, config, known, board_venv)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    """48 small images in two categories (12 normal + 12 anomalous each): 3 ONNX Runtime batches of 16."""
    return write_tree(tmp_path_factory.mktemp("tiny") / "mvtec", ("bottle", "screw"), 12)


def write_tree(root: Path, categories, n: int, size: int = 32) -> Path:
    """An MVTec-layout tree of noise images, ``n`` normal and ``n`` anomalous (brighter, with masks) per category."""
    rng = np.random.default_rng(0)
    for cat in categories:
        for kind in ("good", "crack"):
            for i in range(n):
                path = root / cat / "test" / kind / f"{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                low, high = (0, 160) if kind == "good" else (60 + 8 * i % 150, 256)
                Image.fromarray(rng.integers(low, high, (size, size, 3), dtype=np.uint8)).save(path)
                if kind == "crack":
                    mask = root / cat / "ground_truth" / kind / f"{i:03d}_mask.png"
                    mask.parent.mkdir(parents=True, exist_ok=True)
                    m = np.zeros((size, size), np.uint8)
                    m[8:20, 8:20] = 255
                    Image.fromarray(m).save(mask)
    return root


@pytest.fixture(scope="session")
def built_out(small_build) -> Path:
    """The OUT folder of the session's rb5-gen2 small-recipe build (its stage cache and bundle)."""
    return small_build.bundle_dir.parent
