"""``edgedeploy score --remote HOST`` and ``edgedeploy engine build --remote HOST``: one board, no gate. Torch-free.

* ``score --remote``: the model's bundle and the benchmark's pre-processed tensors go to the board, the board scores
  them with the runner the model file and ``--runtime`` pick (``model.onnx``: ONNX Runtime; with ``--runtime
  qnn-htp|qnn-gpu``: QNN; ``model.engine``: TensorRT, built on the board first when its folder has none), and the
  score file comes back to ``--out`` with the board's fingerprint in its header.
* ``engine build --remote``: the bundle goes to the Jetson, ``edgedeploy engine build`` runs there, and
  ``model.engine``, ``model.engine.json`` and the updated ``manifest.json`` come back into the local bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.remote.inventory import release_all, resolve_boards
from edgedeploy.remote.options import RemoteOptions, require_single

Log = Callable[[str], None]
ENGINE_FILES = ("model.engine", "model.engine.json", "manifest.json")


def _runtime_for(model: Path, runtime: str | None) -> str:
    suffix = model.suffix.lower()
    if suffix in (".engine", ".plan", ".trt"):
        if runtime:
            raise EdgeDeployError(f"--runtime {runtime} runs a .onnx; {model.name} is a TensorRT engine")
        return "tensorrt"
    if suffix == ".dlc":
        raise EdgeDeployError(f"{model.name} is scored by AI Hub inference jobs in the cloud, not on a board over SSH: "
                              "drop --remote, or score model.onnx with --runtime qnn-gpu|qnn-htp on the board")
    if suffix != ".onnx":
        raise EdgeDeployError(f"cannot score {model.name} on a board: expected a bundle's model.onnx or model.engine")
    return runtime or "onnxruntime"


def score_remote_command(remote: RemoteOptions, model: Path, bench: str | None, out: Path | None,
                         data_root: Path | None, categories: tuple[str, ...], save_maps: bool, runtime: str | None,
                         allow_cpu_fallback: bool, qnn_precision: str | None, images: Path | None, card: Path | None,
                         echo: Callable[[str], None]) -> int:
    """``edgedeploy score --remote``: the exit code (0, or the error raised)."""
    import sys

    from edgedeploy.evaluation.data.benchmarks import parse_categories

    if images is not None:
        raise EdgeDeployError("--remote scores a benchmark (--bench) on the board; --images runs where the images are: "
                              "copy the bundle and run `edgedeploy score --images` on the board, or drop --remote")
    if card is not None:
        raise EdgeDeployError("--remote copies the bundle, whose manifest.json holds its card: drop --card")
    if not bench or out is None:
        raise EdgeDeployError("score --remote needs --bench and --out")
    model = Path(model)
    if model.is_dir():  # a bundle folder: the model its target runs (the engine is built on the board)
        from edgedeploy.runtime.bundle import read_manifest

        target = read_manifest(model)["target"]
        model = model / ("model.engine" if runtime is None and target.get("runtime") == "tensorrt" else "model.onnx")
    table = score_remote(remote, model, bench, out, data_root, parse_categories(categories), save_maps, runtime,
                         allow_cpu_fallback, qnn_precision, log=lambda line: print(line, file=sys.stderr, flush=True))
    echo(f"scores: {out} ({len(table.rows)} images, runner {table.meta.get('runner')}, model "
         f"{table.meta.get('model_sha256', '')[:12]}, board {table.meta.get('board')})")
    return 0


def score_remote(remote: RemoteOptions, model: Path, bench: str, out: Path, data_root: Path | None = None,
                 categories: list[str] | None = None, save_maps: bool = False, runtime: str | None = None,
                 allow_cpu_fallback: bool = False, qnn_precision: str | None = None, log: Log = print):
    from edgedeploy.core.files import ensure_writable_file
    from edgedeploy.evaluation.data import load_benchmark
    from edgedeploy.remote.inputs import card_size, prepare_inputs
    from edgedeploy.remote.session import remote_score
    from edgedeploy.runtime.bundle import bundle_of
    from edgedeploy.runtime.scorefile import read_scores

    ensure_writable_file(out, "--out")
    model = Path(model)
    chosen = _runtime_for(model, runtime)
    if not model.is_file() and not (chosen == "tensorrt" and (model.parent / "manifest.json").is_file()):
        raise EdgeDeployError(f"model file {model} does not exist: pass a bundle's model.onnx or model.engine")
    bundle_dir, manifest = bundle_of(model)
    if manifest is None:
        raise EdgeDeployError(f"{model} is not inside a bundle (no manifest.json beside it): --remote copies the bundle "
                              "to the board; pass out/<target>/model.onnx")
    boards = resolve_boards(remote, log)
    try:
        require_single(boards, "score")
        bench_obj = load_benchmark(bench, data_root, categories)
        prepared = prepare_inputs(bench_obj, card_size(manifest, f"{bundle_dir}/manifest.json"), log)
        result = remote_score(boards[0], bundle_dir, manifest, prepared, Path(out), runtime=chosen,
                              clean=remote.remote_clean, allow_cpu_fallback=allow_cpu_fallback,
                              qnn_precision=qnn_precision, log=log, maps=save_maps)
    finally:
        release_all(boards)
    for note in result.notes:
        log(f"note: {note}")
    if result.latency:
        from edgedeploy.runtime.latency import latency_line

        log(latency_line(result.latency, f"{result.runtime} on {result.board}"))
    return read_scores(out)


def engine_build_remote(remote: RemoteOptions, bundle_dir: Path, keep_fp32: tuple[str, ...] = (),
                        log: Log = print) -> None:
    from edgedeploy.core.hashing import sha256_json
    from edgedeploy.remote.fingerprint import clock_warning, describe
    from edgedeploy.remote.session import BoardSession, check_board_fits, check_runtime_present, bundle_listing
    from edgedeploy.runtime.bundle import read_manifest, require_layout, require_runtime

    manifest = read_manifest(bundle_dir)
    require_runtime(bundle_dir, manifest, "tensorrt", "`edgedeploy engine build`")
    require_layout(bundle_dir, manifest, "`edgedeploy engine build`")
    boards = resolve_boards(remote, log)
    try:
        require_single(boards, "engine build")
        board = boards[0]
        run = "engine-" + sha256_json({"model": manifest["model"]["sha256"], "keep": list(keep_fp32)})[:16]
        session = BoardSession(board, run, log)
        files = [(f"bundle/{f.name}", f) for f in bundle_listing(Path(bundle_dir))]
        hello = session.hello([name for name, _ in files])
        log(f"[{board.name}] {describe(hello.fingerprint)}")
        warning = clock_warning(hello.fingerprint, board.name)
        if warning:
            log(warning)
        check_board_fits(board.name, hello.fingerprint, manifest["target"], "tensorrt")
        check_runtime_present(board.name, hello.runtimes, "tensorrt")
        missing = session.missing(files, hello.files)
        session.check_disk(hello, 3 * sum(f.bytes for _, f in missing) + (1 << 20))
        session.upload(missing)
        words = [*session.edgedeploy(), "engine", "build", f"{session.workdir}/bundle"]
        for spec in keep_fp32:
            words += ["--keep-fp32", spec]
        done = board.target.run(words, what="engine build", on_stderr=lambda line: log(f"[{board.name}] {line}"))
        for line in done.stdout.decode("utf-8", "replace").splitlines():
            log(f"[{board.name}] {line}")
        if done.returncode != 0:
            raise session._failure(done.returncode, done.stderr, "engine build")
        session.fetch([(f"bundle/{name}", Path(bundle_dir) / name) for name in ENGINE_FILES])
        log(f"engine: {Path(bundle_dir) / 'model.engine'} (built on {board.name}, copied back with model.engine.json "
            "and manifest.json)")
        if remote.remote_clean:
            session.clean()
    finally:
        release_all(boards)
