"""The board side of ``--remote``: ``edgedeploy remote-agent OP``, run over ssh by the host (hidden from ``--help``).

Torch-free (the core install only). Every operation works inside one run's work folder, ``ROOT/RUN`` (``--root``,
``--run``); the names it is given are relative to it, and a name that would leave it (``..``, an absolute path) is
refused. Nothing is written anywhere else: the score cache lives in ``ROOT/RUN/cache``.

* ``hello``  version, protocol, the board's fingerprint (``fingerprint.collect``), runtimes, free disk; makes the work
  folder and proves it writable;
  and says which of the files it is asked about are already there (size, sha256): a re-run copies only the rest;
* ``put``    files from stdin (a JSON listing, then their bytes): each written under a temporary name, its size and
  sha256 checked, then renamed, so an interrupted copy never leaves a file a later run takes as complete;
* ``get``    files to stdout the same way (the score file and its maps streamed back);
* ``score``  the pre-processed tensors through the bundle's runner, cached per tensor (``runtime.cache.ScoreCache``:
  chunk files written atomically), so a re-run after a dropped connection scores only what is missing; writes the
  score file with the board's fingerprint in its header. With ``--watch-stdin`` it stops when its stdin closes
  (the ssh connection dropped); a lock file makes a second scorer on the same folder wait for the first;
* ``clean``  removes the work folder (only a folder this agent made: it holds the ``.edgedeploy-run`` marker).

Output protocol: ``@progress DONE TOTAL`` lines on stderr, one ``@result {json}`` line on stdout; errors as one
``error: ...`` line on stderr with exit 2 (bad input) or 3 (the runtime failed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path, PurePosixPath

import click

from edgedeploy.core.hashing import sha256_file

PROTOCOL = 1
MARKER = ".edgedeploy-run"
RESULT = "@result "
PROGRESS = "@progress "
INPUTS_FORMAT = 1
RUNTIMES = ("onnxruntime", "tensorrt", "qnn-htp", "qnn-gpu")


class AgentError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _result(obj: dict) -> None:
    sys.stdout.write(RESULT + json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _say(line: str) -> None:
    sys.stderr.write(line.rstrip("\n") + "\n")
    sys.stderr.flush()


def workdir(root: str, run: str) -> Path:
    if not run or "/" in run or run in (".", "..") or run.startswith("."):
        raise AgentError(f"bad run name {run!r}")
    return Path(os.path.abspath(os.path.expanduser(root))) / run


def inside(folder: Path, name: str) -> Path:
    """``folder/name`` for a relative name that stays inside ``folder``."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or not rel.parts or any(p in ("..", "") for p in rel.parts):
        raise AgentError(f"refused file name {name!r}: names are relative to the run's work folder")
    return folder.joinpath(*rel.parts)


def _free_bytes(path: Path) -> int | None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _make_workdir(folder: Path) -> str | None:
    """Make the run's folder and prove it writable; the reason when not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / MARKER
        if not marker.is_file():
            marker.write_text(json.dumps({"made": time.strftime("%Y-%m-%dT%H:%M:%S"), "by": "edgedeploy remote-agent"}))
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename or folder}"
    return None


@click.group("remote-agent", hidden=True)
def remote_agent() -> None:
    """The board side of --remote (run by the host over ssh)."""


def _guard(fn):
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AgentError as exc:
            _say(f"error: {exc}")
            sys.exit(exc.code)
        except Exception as exc:  # noqa: BLE001 - edgedeploy's own errors carry their exit code
            code = getattr(exc, "exit_code", None)
            if code is None:
                raise
            _say(f"error: {exc}")
            sys.exit(code)
    return run


def _common(fn):
    fn = click.option("--run", "run_name", required=True, help="The run's folder name under --root.")(fn)
    return click.option("--root", required=True, help="The folder that holds run folders (~ allowed).")(fn)


@remote_agent.command("hello")
@_common
@click.argument("names", nargs=-1)
@_guard
def hello(root: str, run_name: str, names: tuple[str, ...]) -> None:
    """Version, fingerprint, runtimes, free disk; make the work folder; size and sha256 of NAMES already there."""
    from edgedeploy import __version__
    from edgedeploy.remote.fingerprint import collect

    folder = workdir(root, run_name)
    problem = _make_workdir(folder)
    fp = collect()
    _result({"edgedeploy": __version__, "protocol": PROTOCOL, "fingerprint": fp, "workdir": str(folder),
             "workdir_error": problem, "free_bytes": _free_bytes(folder), "python": sys.executable,
             "runtimes": {"onnxruntime": fp.get("onnxruntime"), "tensorrt": fp.get("tensorrt"),
                          "qnn": fp.get("onnxruntime_qnn")},
             "files": {} if problem else _stat(folder, names)})


def _stat(folder: Path, names) -> dict:
    found = {}
    for name in names:
        path = inside(folder, name)
        found[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)} if path.is_file() else None
    return found


@remote_agent.command("stat")
@_common
@click.argument("names", nargs=-1)
@_guard
def stat(root: str, run_name: str, names: tuple[str, ...]) -> None:
    """Size and sha256 of NAMES in the work folder (null where missing)."""
    _result({"files": _stat(workdir(root, run_name), names)})


def read_exact(stream, size: int, sink, h) -> int:
    """Copy ``size`` bytes from ``stream`` to ``sink``, hashing them into ``h``; the bytes copied (fewer when cut)."""
    left = size
    while left:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            break
        sink.write(chunk)
        h.update(chunk)
        left -= len(chunk)
    return size - left


@remote_agent.command("put")
@_common
@_guard
def put(root: str, run_name: str) -> None:
    """Files from stdin: a JSON line ``{"files": [{"name", "bytes", "sha256"}, ...]}``, then their bytes one after the
    other. Each is written under a temporary name, checked against its size and sha256, then renamed into place."""
    folder = workdir(root, run_name)
    if not (folder / MARKER).is_file():
        raise AgentError(f"{folder} is not a work folder made by `remote-agent hello`")
    stream = sys.stdin.buffer
    try:
        listing = json.loads(stream.readline())["files"]
    except (ValueError, KeyError, TypeError):
        raise AgentError("put: no file listing on stdin", code=3) from None
    written = []
    for entry in listing:
        name, want_bytes, want_sha = entry["name"], int(entry["bytes"]), entry["sha256"]
        path = inside(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as fh:
                size = read_exact(stream, want_bytes, fh, h)
                fh.flush()
                os.fsync(fh.fileno())
            if size != want_bytes or h.hexdigest() != want_sha:
                raise AgentError(f"{name}: received {size} of {want_bytes} bytes (sha256 {h.hexdigest()[:12]}, expected "
                                 f"{want_sha[:12]}): the copy was cut; nothing of it was kept", code=3)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(name)
    _result({"written": written})


@remote_agent.command("get")
@_common
@click.argument("names", nargs=-1)
@_guard
def get(root: str, run_name: str, names: tuple[str, ...]) -> None:
    """NAMES to stdout: a JSON line ``{"files": [{"name", "bytes", "sha256"}, ...]}``, then their bytes."""
    folder = workdir(root, run_name)
    paths = [inside(folder, name) for name in names]
    missing = [name for name, path in zip(names, paths) if not path.is_file()]
    if missing:
        raise AgentError(f"{', '.join(missing)} not in the work folder", code=3)
    listing = [{"name": n, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for n, p in zip(names, paths)]
    out = sys.stdout.buffer
    out.write((json.dumps({"files": listing}) + "\n").encode())
    for path in paths:
        with open(path, "rb") as fh:
            shutil.copyfileobj(fh, out, 1 << 20)
    out.flush()


@remote_agent.command("clean")
@_common
@_guard
def clean(root: str, run_name: str) -> None:
    """Remove the work folder (only one made by hello)."""
    folder = workdir(root, run_name)
    if not folder.exists():
        _result({"removed": False})
        return
    if not (folder / MARKER).is_file():
        raise AgentError(f"{folder} holds no {MARKER} marker: not removed (it was not made by edgedeploy)")
    shutil.rmtree(folder)
    _result({"removed": True, "workdir": str(folder)})


def _watch_stdin() -> None:
    """Stop when stdin closes: the ssh connection that started this run is gone."""
    def watch() -> None:
        try:  # os.read on the descriptor: no buffered reader whose lock could block the interpreter's exit
            while os.read(0, 1 << 16):
                pass
        except OSError:
            pass
        _say("error: the connection to the host closed; stopping (finished images are cached)")
        os._exit(75)
    threading.Thread(target=watch, daemon=True).start()


class _Lock:
    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self):
        import fcntl

        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _say("another scorer is still running in this work folder (a dropped connection's); waiting for it")
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.fh.close()


def model_for(bundle: Path, runtime: str) -> tuple[Path, str | None]:
    """The bundle file a runtime runs, and ``open_runner``'s runtime argument."""
    if runtime == "tensorrt":
        return bundle / "model.engine", None
    if runtime == "qnn-htp" and (bundle / "model_ctx.onnx").is_file():
        return bundle / "model_ctx.onnx", runtime
    if runtime in ("qnn-htp", "qnn-gpu"):
        return bundle / "model.onnx", runtime
    return bundle / "model.onnx", None


def _latency(times_file: Path) -> dict | None:
    """Latency over every run that scored into this folder: each run's first image is its warm-up."""
    from edgedeploy.runtime.latency import latency_summary

    seen: dict[str, float] = {}
    runs: dict[str, list[str]] = {}
    try:
        lines = times_file.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            entry = json.loads(line)
            pairs = list(zip(entry["shas"], entry["times"]))
            run = str(entry["run"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a dropped run
        for sha, t in pairs:
            if sha not in seen:
                runs.setdefault(run, []).append(sha)
            seen[sha] = float(t)
    pooled = [seen[sha] for shas in runs.values() for sha in shas[1:]]
    return latency_summary(pooled, warmup=0)


@remote_agent.command("score")
@_common
@click.option("--runtime", type=click.Choice(RUNTIMES), required=True)
@click.option("--out", "out_name", required=True, help="Score file name in the work folder.")
@click.option("--name", "board_name", required=True, help="The board's name as the host calls it (for the header).")
@click.option("--allow-cpu-fallback", is_flag=True)
@click.option("--qnn-precision", type=click.Choice(["fp16", "fp32"]), default=None)
@click.option("--watch-stdin", is_flag=True, help="Stop when stdin closes (the host's ssh connection).")
@click.option("--no-maps", is_flag=True, help="Write no maps side file.")
@_guard
def score(root: str, run_name: str, runtime: str, out_name: str, board_name: str, allow_cpu_fallback: bool,
          qnn_precision: str | None, watch_stdin: bool, no_maps: bool) -> None:
    """Score inputs/ with bundle/ into OUT (and OUT's maps), resuming from the work folder's cache."""
    folder = workdir(root, run_name)
    if not (folder / MARKER).is_file():
        raise AgentError(f"{folder} is not a work folder made by `remote-agent hello`")
    if watch_stdin:
        _watch_stdin()
    with _Lock(folder / ".lock"):
        _score(folder, runtime, inside(folder, out_name), board_name, allow_cpu_fallback, qnn_precision, not no_maps)


def _score(folder: Path, runtime: str, out: Path, board_name: str, allow_cpu_fallback: bool,
           qnn_precision: str | None, keep_maps: bool = True) -> None:
    import numpy as np

    from edgedeploy.remote.fingerprint import collect, header_fields
    from edgedeploy.runtime.cache import ScoreCache
    from edgedeploy.runtime.score import open_runner, provenance
    from edgedeploy.runtime.scorefile import ScoreRow, ScoreTable, write_scores

    index_path = folder / "inputs" / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        raise AgentError(f"{index_path} is missing or unreadable: the inputs were not copied") from None
    if index.get("format") != INPUTS_FORMAT:
        raise AgentError(f"inputs format {index.get('format')} is not {INPUTS_FORMAT}")
    model, qnn_runtime = model_for(folder / "bundle", runtime)
    if not model.is_file():
        what = "run `edgedeploy engine build` first" if runtime == "tensorrt" else "the bundle was not copied"
        raise AgentError(f"{model} does not exist: {what}")
    runner = open_runner(model, _say, runtime=qnn_runtime, allow_cpu_fallback=allow_cpu_fallback,
                         qnn_precision=qnn_precision)
    try:
        if int(runner.input_size) != int(index["size"]):
            raise AgentError(f"the inputs are {index['size']}x{index['size']} but {model.name} takes "
                             f"{runner.input_size}x{runner.input_size}: pre-process with the bundle's card")
        cache = ScoreCache(runner.identity(), root=folder / "cache" / "scores")
        known = cache.load()
        parts = {p["name"]: np.load(inside(folder / "inputs", p["name"]), mmap_mode="r", allow_pickle=False)
                 for p in index["parts"]}
        samples = index["samples"]
        shas = []
        for s in samples:
            tensor = np.ascontiguousarray(parts[s["part"]][s["row"]], dtype=np.float32)
            shas.append(hashlib.sha256(tensor.tobytes()).hexdigest())
        todo: dict[str, int] = {}
        for i, sha in enumerate(shas):
            if sha not in known and sha not in todo:
                todo[sha] = i
        total, done = len(set(shas)), len(set(shas)) - len(todo)
        _say(f"{PROGRESS}{done} {total}")
        run_id = f"{os.getpid()}-{time.time_ns()}"
        times_file = folder / f"times-{runtime}.jsonl"
        pending = list(todo.items())
        computed = 0
        for begin in range(0, len(pending), runner.batch_size):
            batch = pending[begin:begin + runner.batch_size]
            images = np.stack([np.asarray(parts[samples[i]["part"]][samples[i]["row"]], dtype=np.float32)
                               for _, i in batch])
            before = len(runner.inference_times)
            scores, maps = runner.infer(images)
            batch_shas = [sha for sha, _ in batch]
            cache.append(batch_shas, scores, maps)
            new_times = runner.inference_times[before:]
            if len(new_times) == len(batch_shas):
                with open(times_file, "a") as fh:
                    fh.write(json.dumps({"run": run_id, "shas": batch_shas, "times": new_times}) + "\n")
            for k, sha in enumerate(batch_shas):
                known[sha] = (float(scores[k]), maps[k])
            computed += len(batch)
            done += len(batch)
            _say(f"{PROGRESS}{done} {total}")
        cache.compact()
        meta = provenance(runner, index["bench"])
    finally:
        runner.deactivate()
    rows, maps_by_path = [], {}
    for s, sha in zip(samples, shas):
        value, amap = known[sha]
        rows.append(ScoreRow(s["path"], s["category"], int(s["label"]), value))
        if amap is not None:
            maps_by_path[s["path"]] = amap
    latency = _latency(times_file)
    meta.update({k: str(v) for k, v in (latency or {}).items()})
    if latency:
        meta["latency_timed"] = runner.timed
    fp = collect()
    meta.update({"data_root": index.get("data_root", ""), "inputs": f"tensors pre-processed on the host "
                 f"({index['size']}x{index['size']}, the bundle's card), sha256 {index.get('digest', '')[:16]}",
                 "remote_runtime": runtime, **header_fields(fp, board_name)})
    from edgedeploy.runtime.scorefile import maps_path

    maps_file = maps_path(out)
    if keep_maps and maps_by_path:
        meta["maps"] = "raw anomaly_map output at model resolution (upsample with edgedeploy.core.postprocess)"
    else:
        maps_by_path = {}
        maps_file.unlink(missing_ok=True)
    write_scores(out, ScoreTable(meta, rows), maps_by_path or None)
    _result({"computed": computed, "cached": len(rows) - computed, "rows": len(rows), "out": out.name,
             "sha256": sha256_file(out), "bytes": out.stat().st_size,
             "maps": maps_file.name if maps_file.is_file() and maps_by_path else None,
             "maps_sha256": sha256_file(maps_file) if maps_file.is_file() and maps_by_path else None,
             "maps_bytes": maps_file.stat().st_size if maps_file.is_file() and maps_by_path else None,
             "latency": latency, "fingerprint": fp})
