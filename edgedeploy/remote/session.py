"""One board, driven from the host: checks, copy, engine build, score, fetch, clean (``docs/remote.md``).

Every step is a ``remote-agent`` call over ``transport.SshTarget`` into the run's own work folder on the board,
``REMOTE_DIR/run-<key>``, where the key is the bundle graph's and the inputs' digest: the same command run again
lands in the same folder, finds what was copied (checked by sha256) and what was scored (the agent's score cache),
and does only the rest.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgedeploy import __version__
from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.files import atomic_path
from edgedeploy.core.hashing import sha256_file
from edgedeploy.remote.agent import PROGRESS, PROTOCOL, RESULT, read_exact
from edgedeploy.remote.fingerprint import clock_warning, describe
from edgedeploy.remote.inputs import LocalFile, PreparedInputs
from edgedeploy.remote.transport import RemoteError, RemoteSetupError, SshTarget, home_path

Log = Callable[[str], None]
DEFAULT_REMOTE_DIR = "~/edgedeploy-runs"
QUICK_TIMEOUT = 120  # seconds for a call that does no long work (hello, stat, clean)
DISK_MARGIN = 1.2
OWN_KIND = {"tensorrt": "jetson", "qnn": "qualcomm"}
KIND_NAME = {"jetson": "a Jetson", "qualcomm": "a Qualcomm board (RB5 Gen2)"}
RUNTIME_NAME = {"tensorrt": "TensorRT", "qnn-gpu": "QNN GPU (onnxruntime-qnn)", "qnn-htp": "QNN HTP (onnxruntime-qnn)",
                "onnxruntime": "ONNX Runtime (CPU)"}


@dataclass
class Board:
    """A board as the user named it: ssh target, where edgedeploy lives there, the folder for runs."""

    target: SshTarget
    venv: str | None = None
    remote_dir: str = DEFAULT_REMOTE_DIR
    release: Callable[[], None] | None = None  # a labgrid place's release, when it was acquired for this run

    @property
    def name(self) -> str:
        return self.target.name


@dataclass
class Hello:
    version: str
    fingerprint: dict[str, str]
    workdir: str
    free_bytes: int | None
    runtimes: dict[str, str | None]
    files: dict = field(default_factory=dict)  # what the board already holds of the files asked about


@dataclass
class RemoteScore:
    """What one board produced: the score file fetched to the host, and what it says about the board."""

    board: str
    scores: Path
    fingerprint: dict[str, str]
    runtime: str
    computed: int
    cached: int
    notes: list[str] = field(default_factory=list)
    latency: dict | None = None
    workdir: str = ""


def run_key(model_sha256: str, inputs_digest: str) -> str:
    from edgedeploy.core.hashing import sha256_json

    return "run-" + sha256_json({"model": model_sha256, "inputs": inputs_digest, "protocol": PROTOCOL})[:16]


def install_line(board: Board) -> str:
    pip = f"{board.venv.rstrip('/')}/bin/pip" if board.venv else "pip"
    wheel = f"edgedeploy-{__version__}-py3-none-any.whl"
    return (f"build the wheel here with `pip wheel --no-deps -w dist .`, copy dist/{wheel} to {board.name}, and there "
            f"run `{pip} install --force-reinstall '{wheel}[jetson]'` (a Jetson; `[qnn]` on an RB5 Gen2)")


def resolve_runtime(requested: str | None, target: dict) -> str:
    """The runner on the board: the one asked for, or the bundle's (TensorRT for a Jetson bundle, QNN GPU or HTP by
    the profile's compute unit for an RB5 Gen2 bundle)."""
    if requested not in (None, "bundle"):
        return requested
    runtime = target.get("runtime")
    if runtime == "tensorrt":
        return "tensorrt"
    if runtime == "qnn":
        unit = str((target.get("build") or {}).get("compute_unit", "gpu")).lower()
        return "qnn-htp" if unit in ("htp", "npu", "dsp") else "qnn-gpu"
    return "onnxruntime"


def check_board_fits(board: str, fingerprint: dict[str, str], target: dict, runtime: str) -> list[str]:
    """Refuse a bundle whose target is not the board's kind (after the fingerprint, before any copy); the notes the
    report then carries. ``--runtime onnxruntime`` runs anywhere and says the board's own runtime was not used."""
    kind = fingerprint.get("kind", "other")
    target_name, target_runtime = target.get("name", "?"), target.get("runtime", "?")
    what = fingerprint.get("model") or f"{fingerprint.get('arch', '?')} machine without a device-tree model"
    if runtime == "onnxruntime":
        own = OWN_KIND.get(target_runtime)
        if own is None:
            return []
        return [f"{board}: --runtime onnxruntime ran the bundle's graph on the board's CPU (ONNX Runtime FP32): the "
                f"{target_name} bundle's own runtime ({target_runtime}) was not used, so this checks the loop, not "
                "the device's arithmetic"]
    wanted_runtime = "tensorrt" if runtime == "tensorrt" else "qnn"
    if target_runtime != wanted_runtime:
        raise RemoteSetupError(f"--runtime {runtime} needs a {'Jetson' if wanted_runtime == 'tensorrt' else 'rb5-gen2'} "
                               f"bundle, but this is the {target_name} bundle ({target_runtime}): pick its runtime or "
                               "--runtime onnxruntime")
    own = OWN_KIND[wanted_runtime]
    if kind == own:
        return []
    if runtime == "qnn-htp" and fingerprint.get("arch") == "x86_64" and fingerprint.get("onnxruntime_qnn"):
        return [f"{board}: QNN HTP backend emulated on this x86_64 board's CPU (onnxruntime-qnn "
                f"{fingerprint['onnxruntime_qnn']}): Qualcomm's arithmetic, not the device's speed"]
    also = (" (or, emulated, on an x86_64 board with onnxruntime-qnn installed)" if runtime == "qnn-htp" else "")
    raise RemoteSetupError(f"{board} is not {KIND_NAME[own]} ({what}): the {target_name} bundle's runtime "
                           f"({RUNTIME_NAME.get(runtime, runtime)}) runs only there{also}; pass --runtime onnxruntime "
                           "to test the loop on its CPU, or point --remote at the right board")


def check_runtime_present(board: str, runtimes: dict, runtime: str) -> None:
    """A board that lacks the runtime it is asked for is refused in one line; nothing falls back."""
    key = {"tensorrt": "tensorrt", "qnn-gpu": "qnn", "qnn-htp": "qnn"}.get(runtime, "onnxruntime")
    if runtimes.get(key):
        return
    how = {"tensorrt": "JetPack's python3-libnvinfer, seen from a venv made with --system-site-packages",
           "qnn": "pip install 'edgedeploy[qnn]' (onnxruntime-qnn, Python 3.11+)",
           "onnxruntime": "pip install onnxruntime"}[key]
    raise RemoteSetupError(f"{board} has no {RUNTIME_NAME.get(runtime, runtime)} for --runtime {runtime} (install "
                           f"{how}); nothing falls back to another runtime")


class BoardSession:
    """The run's work folder on one board."""

    def __init__(self, board: Board, run: str, log: Log = print):
        self.board, self.run_name, self.log = board, run, log
        self.workdir = ""

    @property
    def name(self) -> str:
        return self.board.name

    def edgedeploy(self) -> list[str]:
        if self.board.venv:
            return [home_path(self.board.venv.rstrip("/") + "/bin/edgedeploy")]
        return ["edgedeploy"]

    def agent(self, op: str, *args: str, what: str = "", timeout: float | None = QUICK_TIMEOUT, **kw) -> dict:
        words = [*self.edgedeploy(), "remote-agent", op, "--root", self.board.remote_dir, "--run", self.run_name, *args]
        done = self.board.target.run(words, what=what or op, timeout=timeout, **kw)
        if done.returncode != 0:
            raise self._failure(done.returncode, done.stderr, what or op)
        for line in reversed(done.stdout.decode("utf-8", "replace").splitlines()):
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
        raise RemoteError(f"{self.name}: the board's edgedeploy answered {op} with no result")

    def _failure(self, code: int, stderr: str, what: str) -> EdgeDeployError:
        lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith(PROGRESS)]
        errors = [line for line in lines if line.startswith("error: ")]
        last = (errors or lines or [f"exit {code}"])[-1]
        where = self.board.venv and f"{self.board.venv}/bin/edgedeploy" or "edgedeploy on the login shell's PATH"
        if code == 127 or "command not found" in last or "No such file or directory" in last and "edgedeploy" in last:
            return RemoteSetupError(f"{self.name}: edgedeploy is not installed there ({where} not found): "
                                    f"{install_line(self.board)}; or pass --remote-venv")
        if "No such command 'remote-agent'" in stderr:
            return self._version_mismatch()
        message = last[len("error: "):] if last.startswith("error: ") else last
        cls = RemoteSetupError if code == 2 else RemoteError
        return cls(f"{self.name}: {what} failed on the board: {message}")

    def _version_mismatch(self) -> EdgeDeployError:
        done = self.board.target.run([*self.edgedeploy(), "--version"], timeout=QUICK_TIMEOUT, what="--version")
        match = re.search(r"version\s+(\S+)", done.stdout.decode("utf-8", "replace"))
        theirs = match.group(1) if match else "unknown"
        return RemoteSetupError(f"{self.name} runs edgedeploy {theirs}, this host {__version__}: the board must run the "
                                f"same version; {install_line(self.board)}")

    def hello(self, names: list[str] = ()) -> Hello:
        """The board check; ``names``: files of the work folder to report (size, sha256) if already there."""
        info = self.agent("hello", *names, what="the board check")
        if info.get("edgedeploy") != __version__ or info.get("protocol") != PROTOCOL:
            theirs = f"{info.get('edgedeploy')} (agent protocol {info.get('protocol')})"
            raise RemoteSetupError(f"{self.name} runs edgedeploy {theirs}, this host {__version__} (protocol "
                                   f"{PROTOCOL}): the board must run the same version; {install_line(self.board)}")
        self.workdir = info["workdir"]
        if info.get("workdir_error"):
            raise RemoteSetupError(f"{self.name}: cannot write the work folder {info['workdir']} "
                                   f"({info['workdir_error']}): pass a --remote-dir the login user can write")
        return Hello(info["edgedeploy"], info.get("fingerprint") or {}, info["workdir"], info.get("free_bytes"),
                     info.get("runtimes") or {}, info.get("files") or {})

    def check_disk(self, hello: Hello, need: int) -> None:
        free = hello.free_bytes
        if free is not None and free < need * DISK_MARGIN:
            raise RemoteSetupError(f"{self.name}: {free / 2**20:.0f} MiB free at {hello.workdir}, this run needs about "
                                   f"{need * DISK_MARGIN / 2**20:.0f} MiB (bundle, inputs, scores): free space there or "
                                   "pass --remote-dir on a larger disk")

    def missing(self, files: list[tuple[str, LocalFile]], found: dict | None = None) -> list[tuple[str, LocalFile]]:
        """The ``(remote name, local file)`` pairs not on the board with the same size and sha256."""
        if found is None:
            found = self.agent("stat", *[name for name, _ in files], what="checking what is already there")["files"]
        return [(name, f) for name, f in files
                if not found.get(name) or found[name].get("sha256") != f.sha256 or found[name].get("bytes") != f.bytes]

    def upload(self, files: list[tuple[str, LocalFile]]) -> int:
        """Copy ``files`` in one ssh call, each file written atomically and checked on the board; bytes sent."""
        if not files:
            return 0
        listing = [{"name": name, "bytes": f.bytes, "sha256": f.sha256} for name, f in files]

        def send(pipe) -> None:
            pipe.write((json.dumps({"files": listing}) + "\n").encode())
            for _, f in files:
                with open(f.path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        pipe.write(chunk)

        self.agent("put", stdin=send, what=f"copying {len(files)} file(s)", timeout=None)
        return sum(f.bytes for _, f in files)

    def fetch(self, wanted: list[tuple[str, Path]]) -> None:
        """Stream ``(remote name, local path)`` files back in one ssh call; each local file is written atomically and
        checked against the size and sha256 the board sent."""
        import tempfile

        words = [*self.edgedeploy(), "remote-agent", "get", "--root", self.board.remote_dir, "--run", self.run_name,
                 *[name for name, _ in wanted]]
        dests = dict(wanted)
        with tempfile.TemporaryFile() as spool:
            done = self.board.target.run(words, stdout=spool, what="fetching the scores")
            if done.returncode != 0:
                raise self._failure(done.returncode, done.stderr, "fetching the scores")
            spool.seek(0)
            try:
                listing = json.loads(spool.readline())["files"]
            except (ValueError, KeyError, TypeError):
                raise RemoteError(f"{self.name}: the files came back without their listing; run again") from None
            import hashlib

            for entry in listing:
                with atomic_path(dests[entry["name"]]) as tmp:
                    h, want = hashlib.sha256(), int(entry["bytes"])
                    with open(tmp, "wb") as fh:
                        left = want - read_exact(spool, want, fh, h)
                    if left or h.hexdigest() != entry["sha256"]:
                        raise RemoteError(f"{self.name}: {entry['name']} arrived cut or changed; run again to fetch "
                                          "it again")

    def engine_build(self) -> None:
        """``edgedeploy engine build`` on the board's copy of the bundle (a Jetson), its output relayed."""
        bundle = f"{self.workdir}/bundle"
        found = self.agent("stat", "bundle/model.engine", "bundle/model.engine.json")["files"]
        if all(found.values()):
            self.log(f"[{self.name}] model.engine already built in this run's folder: kept (the runner refuses it "
                     "if it does not fit this TensorRT)")
            return
        done = self.board.target.run([*self.edgedeploy(), "engine", "build", bundle], what="engine build",
                                     on_stderr=lambda line: self.log(f"[{self.name}] {line}"))
        for line in done.stdout.decode("utf-8", "replace").splitlines():
            self.log(f"[{self.name}] {line}")
        if done.returncode != 0:
            raise self._failure(done.returncode, done.stderr, "engine build")

    def score(self, runtime: str, out_name: str, allow_cpu_fallback: bool = False, qnn_precision: str | None = None,
              progress: Callable[[int, int], None] | None = None, maps: bool = True) -> dict:
        args = ["--runtime", runtime, "--out", out_name, "--name", self.name, "--watch-stdin"]
        if not maps:
            args.append("--no-maps")
        if allow_cpu_fallback:
            args.append("--allow-cpu-fallback")
        if qnn_precision:
            args += ["--qnn-precision", qnn_precision]

        def relay(line: str) -> None:
            if line.startswith(PROGRESS):
                try:
                    done, total = (int(v) for v in line[len(PROGRESS):].split())
                except ValueError:
                    return
                if progress is not None:
                    progress(done, total)
            elif not line.startswith("error: "):
                self.log(f"[{self.name}] {line}")

        return self.agent("score", *args, what="scoring", timeout=None, on_stderr=relay, keep_stdin_open=True)

    def clean(self) -> None:
        self.agent("clean", what="--remote-clean")


def remote_score(board: Board, bundle_dir: Path, manifest: dict, inputs: PreparedInputs, dest: Path,
                 runtime: str | None = None, clean: bool = False, allow_cpu_fallback: bool = False,
                 qnn_precision: str | None = None, log: Log = print, progress: bool = True,
                 maps: bool = True) -> RemoteScore:
    """The whole board step: check, fingerprint, refuse a misfit before any copy, copy, (engine build), score, fetch
    the score file (and its maps) to ``dest``, clean on request."""
    session = BoardSession(board, run_key(manifest["model"]["sha256"], inputs.digest), log)
    files = [(f"bundle/{f.name}", f) for f in bundle_listing(bundle_dir)]
    files += [(f"inputs/{f.name}", f) for f in inputs.files]  # index.json last: written only after every part
    hello = session.hello([name for name, _ in files])
    fp = hello.fingerprint
    log(f"[{board.name}] {describe(fp)}")
    warning = clock_warning(fp, board.name)
    if warning:
        log(warning)
    chosen = resolve_runtime(runtime, manifest["target"])
    notes = check_board_fits(board.name, fp, manifest["target"], chosen)
    check_runtime_present(board.name, hello.runtimes, chosen)
    missing = session.missing(files, hello.files)
    size = sum(f.bytes for _, f in missing)
    session.check_disk(hello, size + 3 * inputs.count * 64 * 64 * 4 + (1 << 20))
    log(f"[{board.name}] work folder {hello.workdir}; copying {size / 2**20:.1f} MiB ({len(missing)} file(s); "
        f"{len(files) - len(missing)} there already)")
    session.upload(missing)
    if chosen == "tensorrt":
        session.engine_build()
    out_name = f"scores-{chosen}.csv"
    bar = _bar(inputs.count, f"{board.name} ({chosen})", progress)
    try:
        result = session.score(chosen, out_name, allow_cpu_fallback, qnn_precision,
                               progress=lambda done, total: _advance(bar, done, total, board.name, log, progress),
                               maps=maps)
    finally:
        bar.close()
    log(f"[{board.name}] {result['rows']} images: {result['cached']} from the board's cache, {result['computed']} "
        "scored")
    from edgedeploy.runtime.scorefile import maps_path

    wanted = [(result["out"], dest)] + ([(result["maps"], maps_path(dest))] if result.get("maps") else [])
    session.fetch(wanted)
    if not result.get("maps"):
        maps_path(dest).unlink(missing_ok=True)
    if clean:
        session.clean()
        log(f"[{board.name}] --remote-clean: removed {hello.workdir}")
    return RemoteScore(board.name, dest, result.get("fingerprint") or fp, chosen, result["computed"], result["cached"],
                       notes, result.get("latency"), hello.workdir)


def bundle_listing(bundle_dir: Path) -> list[LocalFile]:
    """The bundle's files (top level, no hidden files), manifest.json last."""
    files = sorted((p for p in Path(bundle_dir).iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: (p.name == "manifest.json", p.name))
    return [LocalFile(p.name, p, sha256_file(p), p.stat().st_size) for p in files]


def _bar(total: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="img", file=sys.stderr, disable=(None if enabled else True), leave=False,
                dynamic_ncols=True)


def _advance(bar, done: int, total: int, name: str, log: Log, shown: bool) -> None:
    if not shown:  # a fleet: a line per tenth instead of one bar per board
        step = max(1, total // 10)
        if done == total or done // step != (bar.n // step):
            log(f"[{name}] {done}/{total} images")
        bar.n = done
        return
    if bar.total != total:
        bar.total = total
    bar.n = done
    bar.refresh()


def quote_words(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)
