"""Two score files compared, with no model and no images: ``edgedeploy fidelity --host-scores A --device-scores B``.

The host file may come from a GPU workstation and the device file from a Jetson (both written by
``edgedeploy score`` or by hand). Image-level metrics and the gate come from the files alone. With
``--bench`` (and ``--data-root``) as well, the files are checked against that benchmark, and where
both files have maps side files and the benchmark has masks, pixel metrics come from them.

What a pair of files must agree on (else :class:`~edgedeploy.runtime.scorefile.ScoreFileError`, exit 2):

* each is a score file (the ``# edgedeploy-scores: 1`` line); a ``# bench:`` line is all the header
  it needs;
* the header keys in :data:`IDENTITY_KEYS`, wherever both files have them (``checkpoint_sha256`` read
  as in ``device_scores.normalise_checkpoint``, ``bench`` through the benchmark aliases);
* the same images with the same categories and labels (the first differences are named).

A different ``model_sha256`` is a warning: the host's graph and the device's compiled one differ by design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.evaluation.data.benchmarks import Benchmark, Sample, normalise_name
from edgedeploy.evaluation.fidelity.device_scores import in_benchmark_order, match_benchmark, normalise_checkpoint
from edgedeploy.runtime.batch import ScoredBenchmark
from edgedeploy.runtime.scorefile import ScoreFileError, ScoreTable, first_items, read_scores

IDENTITY_KEYS = ("bench", "checkpoint_sha256", "recipe", "recipe_sha256", "image_size")
SCORES_ONLY = "scores"  # the benchmark's name when neither --bench nor a '# bench:' line names one


@dataclass
class ScoreFilePair:
    """Both files, in the same image order, and the benchmark they score."""

    bench: Benchmark
    host: ScoredBenchmark
    device: ScoredBenchmark
    warnings: list[str] = field(default_factory=list)
    recipe_name: str | None = None


def _key(name: str, value: str) -> str:
    value = value.strip()
    if name == "bench":
        return normalise_name(value)
    if name == "checkpoint_sha256":
        return normalise_checkpoint(value)
    return value


def check_headers(host_path: Path, host: dict, device_path: Path, device: dict) -> list[str]:
    """Refuse files whose shared identity keys differ; warnings for what may differ."""
    for name in IDENTITY_KEYS:
        if name in host and name in device and _key(name, host[name]) != _key(name, device[name]):
            raise ScoreFileError(f"{host_path} and {device_path} differ in '{name}' ({host[name]} vs {device[name]}): "
                                 "they score different models or image sets; compare files of the same run")
    warnings = []
    h_model, d_model = host.get("model_sha256", "").strip(), device.get("model_sha256", "").strip()
    if h_model and d_model and "unknown" not in (h_model, d_model) and h_model != d_model:
        warnings.append(f"the files were scored with different graphs (host {h_model[:16]}, device {d_model[:16]}): "
                        "expected when the device ran its own compiled graph")
    return warnings


def _row_keys(table: ScoreTable) -> dict[str, tuple[str, int]]:
    return {row.path: (row.category, row.label) for row in table.rows}


def check_same_images(host_path: Path, host: ScoreTable, device_path: Path, device: ScoreTable) -> None:
    """One line naming the first differences when the files do not list the same images and labels."""
    h, d = _row_keys(host), _row_keys(device)
    only_host = [p for p in h if p not in d]
    only_device = [p for p in d if p not in h]
    differ = [f"{p} ({h[p][0]}/label {h[p][1]} vs {d[p][0]}/label {d[p][1]})" for p in h if p in d and h[p] != d[p]]
    problems = []
    if only_host:
        problems.append(f"{len(only_host)} image(s) only in {host_path.name}: {first_items(only_host)}")
    if only_device:
        problems.append(f"{len(only_device)} image(s) only in {device_path.name}: {first_items(only_device)}")
    if differ:
        problems.append(f"{len(differ)} image(s) with another category or label: {first_items(differ)}")
    if problems:
        raise ScoreFileError(f"{host_path} and {device_path} do not list the same images: {'; '.join(problems)}. "
                             "Score the same images on both sides")
    if not h:
        raise ScoreFileError(f"{host_path} lists no images")


def _bench_from_rows(name: str, table: ScoreTable, categories: list[str] | None) -> Benchmark:
    samples = tuple(Sample(Path(row.path), row.path, row.category, row.label, "good" if row.label == 0 else "anomalous",
                           None) for row in table.rows if categories is None or row.category in categories)
    return Benchmark(name, Path("."), samples)


def load_score_pair(host_path: str | Path, device_path: str | Path, bench: str | None = None,
                    data_root: str | Path | None = None, categories: list[str] | None = None) -> ScoreFilePair:
    """Read, check and align two score files; ``bench`` (with ``data_root``) checks them against a benchmark."""
    host_path, device_path = Path(host_path), Path(device_path)
    host, device = read_scores(host_path), read_scores(device_path)
    warnings = check_headers(host_path, host.meta, device_path, device.meta)
    check_same_images(host_path, host, device_path, device)
    named = host.meta.get("bench") or device.meta.get("bench")
    if bench is not None and named and normalise_name(named) != normalise_name(bench):
        raise ScoreFileError(f"the score files score benchmark {named} but --bench is {bench}: pass the matching --bench")
    if bench is not None:
        from edgedeploy.evaluation.data import load_benchmark

        benchmark = load_benchmark(bench, data_root, categories)
        match_benchmark(host_path, host, benchmark, categories is None,
                        "Pass the --bench, --data-root and --categories the files were scored with")
    else:
        if data_root is not None:
            raise EdgeDeployError("--data-root names a benchmark folder: pass --bench with it (the files' images are "
                                  "checked against that benchmark, and its masks give pixel metrics)")
        benchmark = _bench_from_rows(normalise_name(named) if named else SCORES_ONLY, host, categories)
        if categories is not None:
            unknown = sorted(set(categories) - set(benchmark.categories))
            if unknown:
                raise EdgeDeployError(f"--categories {', '.join(unknown)}: not in the score files (they hold "
                                      f"{', '.join(sorted({r.category for r in host.rows}))})")
    recipe_name = host.meta.get("recipe") or device.meta.get("recipe")
    return ScoreFilePair(benchmark, in_benchmark_order("host scores", host_path, host, benchmark),
                         in_benchmark_order("device scores", device_path, device, benchmark), warnings,
                         None if recipe_name in (None, "", "unknown") else recipe_name)
