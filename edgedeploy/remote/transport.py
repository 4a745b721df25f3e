"""The system OpenSSH client, as Ansible's default connection uses it: the user's ``~/.ssh/config``, ProxyJump,
agent and known_hosts apply unchanged, and nothing here re-implements SSH.

Every call is ``ssh [-F FILE] -o BatchMode=yes -o ConnectTimeout=N -o ServerAliveInterval=.. -T -- HOST COMMAND``:

* **BatchMode**: never a password or passphrase prompt in the middle of a run; a host that wants one is refused in
  one line saying how to set up a key.
* **Host keys**: never relaxed here. A board whose key is unknown is refused with the ``ssh-keyscan`` line that adds it
  (check its fingerprint first); only the user's own ssh config (``--ssh-config``) can say otherwise.
* **Timeouts**: ``ConnectTimeout`` for the connection, ``ServerAlive*`` for a link that dies while a command runs;
  short commands also have a wall-clock limit. A host ``ssh`` cannot reach is one line naming it (exit 3).
* **Quoting**: the remote command is built from an argument list, each word passed through ``shlex.quote``; a
  user's string is never pasted into a shell. The one exception is a leading ``~/`` of a remote path, written as
  ``"$HOME"/`` followed by the quoted rest.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Sequence

from edgedeploy.core.errors import EdgeDeployError, ToolFailedError

SSH_FAILED = 255  # ssh's own exit status when the connection or authentication fails
DEFAULT_CONNECT_TIMEOUT = 10
ALIVE_INTERVAL = 5
ALIVE_COUNT = 3
_HOST_RE = re.compile(r"^[A-Za-z0-9_.@:\[\]%+-]+$")

Log = Callable[[str], None]


class RemoteError(ToolFailedError):
    """A board could not be reached, or the connection dropped (exit 3)."""


class RemoteSetupError(EdgeDeployError):
    """The board or the user's SSH setup needs a fix before anything runs: an unknown host key, a login that wants a
    password, edgedeploy missing or of another version, a runtime the board lacks (exit 2)."""


class RemoteWord(str):
    """A remote command word that is already shell-safe (e.g. ``"$HOME"/'venv/bin/edgedeploy'``)."""


def home_path(path: str) -> str:
    """A remote path as a shell word: quoted, with a leading ``~/`` expanded by the remote shell as ``"$HOME"``."""
    if path == "~":
        return RemoteWord('"$HOME"')
    if path.startswith("~/"):
        return RemoteWord('"$HOME"/' + shlex.quote(path[2:]))
    return RemoteWord(shlex.quote(path))


def remote_command(words: Sequence[str]) -> str:
    """One shell command line from an argument list: every word quoted (``RemoteWord``s are already safe)."""
    return " ".join(w if isinstance(w, RemoteWord) else shlex.quote(str(w)) for w in words)


def check_host(host: str) -> str:
    """A host as ``ssh`` takes it (``user@name``, an alias); refuse what could be read as an option or a shell word."""
    if not host or host.startswith("-") or not _HOST_RE.match(host):
        raise EdgeDeployError(f"--remote {host!r} is not a host ssh takes (user@host or an alias from your ssh config; "
                              "letters, digits and . _ - @ : only)")
    return host


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: str
    seconds: float


@dataclass
class SshTarget:
    """One board as ssh reaches it: ``host`` (an alias or ``user@name``), optional ``port``, ``--ssh-config FILE``."""

    host: str
    ssh_config: Path | None = None
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    port: int | None = None
    name: str = ""  # what reports call it (default: the host)
    _resolved: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_host(self.host)
        self.name = self.name or self.host
        if self.ssh_config is not None and not Path(self.ssh_config).is_file():
            raise EdgeDeployError(f"--ssh-config {self.ssh_config} does not exist")

    def ssh_argv(self, *, tty: bool = False) -> list[str]:
        argv = ["ssh"]
        if self.ssh_config is not None:
            argv += ["-F", str(self.ssh_config)]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(self.connect_timeout)}",
                 "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
                 "-o", "LogLevel=ERROR"]
        if self.port is not None:
            argv += ["-p", str(int(self.port))]
        argv += ["-t" if tty else "-T", "--", self.host]
        return argv

    def resolved(self) -> dict:
        """What ``ssh -G`` makes of the host (hostname, port, user, known hosts files): for messages."""
        if self._resolved is None:
            argv = ["ssh", "-G"] + (["-F", str(self.ssh_config)] if self.ssh_config is not None else [])
            argv += (["-p", str(self.port)] if self.port else []) + ["--", self.host]
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL).stdout
            except (OSError, subprocess.TimeoutExpired):
                out = ""
            conf: dict = {}
            for line in out.splitlines():
                key, _, value = line.partition(" ")
                conf.setdefault(key.lower(), value)
            self._resolved = conf
        return self._resolved

    def run(self, words: Sequence[str], *, stdin: IO[bytes] | bytes | Callable[[IO[bytes]], None] | None = None,
            stdout: IO[bytes] | None = None,
            on_stderr: Callable[[str], None] | None = None, timeout: float | None = None, what: str = "",
            keep_stdin_open: bool = False) -> Completed:
        """Run ``words`` on the board. ``stdin``: bytes, a file, or a function writing into the pipe; ``stdout``: a file
        to stream into (else
        collected); ``on_stderr``: each stderr line as it comes; ``keep_stdin_open``: hold the board command's
        stdin open until it ends (the board side exits when it closes: a dropped connection stops it).

        ssh's own failures (exit 255) raise :class:`RemoteError`/:class:`RemoteSetupError`; the command's own exit
        status is returned."""
        argv = self.ssh_argv() + [remote_command(words)]
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if (stdin is not None or keep_stdin_open)
                                    else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise RemoteSetupError("the OpenSSH client `ssh` is not installed here: install it (apt-get install "
                                   "openssh-client)") from None
        errors: list[str] = []
        out_chunks: list[bytes] = []

        def read_err() -> None:
            assert proc.stderr is not None
            for raw in iter(proc.stderr.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                errors.append(line)
                if on_stderr is not None and line:
                    on_stderr(line)

        def read_out() -> None:
            assert proc.stdout is not None
            for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
                if stdout is not None:
                    stdout.write(chunk)
                else:
                    out_chunks.append(chunk)

        def write_in() -> None:
            assert proc.stdin is not None
            try:
                if isinstance(stdin, (bytes, bytearray)):
                    proc.stdin.write(stdin)
                elif callable(stdin):
                    stdin(proc.stdin)
                elif stdin is not None:
                    for chunk in iter(lambda: stdin.read(1 << 20), b""):
                        proc.stdin.write(chunk)
                if not keep_stdin_open:
                    proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass

        threads = [threading.Thread(target=read_err, daemon=True), threading.Thread(target=read_out, daemon=True)]
        if proc.stdin is not None:
            threads.append(threading.Thread(target=write_in, daemon=True))
        for t in threads:
            t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RemoteError(f"{self.name}: {what or 'a command'} did not finish within {timeout:g}s over ssh; "
                              "the board or the link is too slow or hangs") from None
        except KeyboardInterrupt:
            proc.kill()
            raise
        finally:
            if proc.stdin is not None and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        for t in threads:
            t.join(timeout=30)
        stderr_text = "\n".join(errors)
        if proc.returncode == SSH_FAILED:
            raise self.ssh_failure(stderr_text, what)
        return Completed(proc.returncode, b"".join(out_chunks), stderr_text, time.monotonic() - start)

    def ssh_failure(self, stderr: str, what: str = "") -> EdgeDeployError:
        """ssh's exit 255 as one line: unknown host key, login refused, unreachable, dropped."""
        text = " ".join(stderr.split())
        low = text.lower()
        conf = self.resolved()
        hostname, port = conf.get("hostname", self.host), conf.get("port", "22")
        known = (conf.get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0]
        if "identification has changed" in low:
            return RemoteSetupError(f"{self.name}: its host key CHANGED since it was recorded in {known}: if you know "
                                    f"why (the board was reinstalled), remove the old key with `ssh-keygen -f {known} "
                                    f"-R '[{hostname}]:{port}'` and add the new one; edgedeploy never skips this check")
        if "host key verification failed" in low or "no " in low and "host key is known" in low:
            scan = f"ssh-keyscan -p {port} {shlex.quote(hostname)} >> {known}"
            return RemoteSetupError(f"{self.name}: its host key is not known here, and edgedeploy never turns host-key "
                                    f"checking off: check the board's key fingerprint, then add it with `{scan}` (or "
                                    f"log in once with `ssh {shlex.quote(self.host)}`)")
        if "permission denied" in low or "too many authentication failures" in low:
            return RemoteSetupError(f"{self.name}: the login was refused ({_last(stderr)}); ssh runs in BatchMode and "
                                    f"never asks for a password: set up a key (`ssh-copy-id {shlex.quote(self.host)}`) "
                                    "or load it into your ssh agent")
        if "could not resolve hostname" in low:
            return RemoteError(f"{self.name}: ssh cannot resolve the host name ({_last(stderr)}): check --remote and "
                               "your ssh config")
        reach = ("connection refused", "timed out", "no route to host", "network is unreachable", "connection reset",
                 "connection closed", "broken pipe", "not responding", "closed by remote host", "lost connection")
        if any(r in low for r in reach):
            during = f" during {what}" if what else ""
            return RemoteError(f"{self.name}: ssh cannot reach {hostname} port {port} within {self.connect_timeout}s, "
                               f"or the connection dropped{during} ({_last(stderr)}); run the same command again to "
                               "resume when the board is back")
        return RemoteError(f"{self.name}: ssh failed{' during ' + what if what else ''}: {_last(stderr) or 'exit 255'}")


def _last(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
