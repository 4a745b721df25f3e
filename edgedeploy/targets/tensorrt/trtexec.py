"""``build_engine.sh`` and ``bench_engine.sh``: the trtexec commands that build the engine on the Jetson and
time it there, each flag explained.

Every flag emitted here is in TensorRT 10.3's ``trtexec --help`` (NVIDIA/TensorRT tag v10.3.0,
samples/common/sampleOptions.cpp); ``tests/targets/test_trtexec.py`` holds that list and checks
both scripts against it.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgedeploy.runtime.engine_check import BUILD_SCRIPT
from edgedeploy import __version__
from edgedeploy.core.files import atomic_path, write_text_atomic
from edgedeploy.core.profiles import DeviceProfile
from edgedeploy.runtime import engine_metadata, latency

ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"
SCRIPT = BUILD_SCRIPT
METADATA_SCRIPT = "engine_metadata.py"
LATENCY_MODULE = "latency.py"  # engine_metadata.py summarises bench_engine.sh's times with it
BENCH_SCRIPT = "bench_engine.sh"
BENCH_TIMES = "times.json"
BENCH_LOG = "bench_engine.log"
LOG = "build_engine.log"
DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


@dataclass(frozen=True)
class Flag:
    text: str  # the argument exactly as passed, e.g. --fp16 or --saveEngine=model.engine
    why: str


@dataclass(frozen=True)
class BuildSettings:
    """What the engine build uses, from the profile's ``build:`` section."""

    workspace_mib: int
    builder_optimization_level: int
    compute_capability: str
    tensorrt_version: str
    trtexec: str
    bench_warmup_ms: int = 200  # trtexec's own defaults (sampleOptions.h) unless the profile says otherwise
    bench_duration_s: int = 3

    @classmethod
    def from_profile(cls, profile: DeviceProfile) -> "BuildSettings":
        return cls.from_target(profile.summary())

    @classmethod
    def from_target(cls, target: dict) -> "BuildSettings":
        """From a profile's summary, as a bundle's ``manifest.json`` records it under ``target``."""
        b = target["build"]
        return cls(int(b.get("workspace_mib", 1024)), int(b.get("builder_optimization_level", 3)),
                   str(b.get("compute_capability", "")), str(b.get("tensorrt_version", target["runtime_version"])),
                   str(b.get("trtexec", DEFAULT_TRTEXEC)), int(b.get("bench_warmup_ms", 200)),
                   int(b.get("bench_duration_s", 3)))

    def to_dict(self) -> dict:
        return {"workspace_mib": self.workspace_mib, "builder_optimization_level": self.builder_optimization_level,
                "timing_cache": TIMING_CACHE}


def trtexec_flags(settings: BuildSettings, keep_specs: list[str], int8: bool = False) -> list[Flag]:
    flags = [
        Flag("--onnx=model.onnx", "the audited graph of this bundle (static shapes, normalisation inside)"
             + ("; here its explicitly quantised QDQ form (symmetric INT8 Q/DQ, zero points 0)" if int8 else "")),
        Flag(f"--saveEngine={ENGINE}", "write the serialized engine here; it loads only on this GPU type and TensorRT 10.3"),
        Flag("--fp16", "allow FP16 kernels in addition to FP32 (the target precision)" if not int8 else
             "allow FP16 kernels for the layers the QDQ graph keeps float (LayerNorm, Softmax, GELU, residual adds)"),
        *([Flag("--int8", "allow INT8 kernels: the graph is explicitly quantised (its Q/DQ scales), so no calibration "
                "cache is given; TensorRT runs the quantised layers in INT8")] if int8 else []),
        Flag(f"--memPoolSize=workspace:{settings.workspace_mib}M",
             "cap the builder's scratch (workspace) memory pool; the Jetson's 8 GB are shared with the CPU"),
        Flag(f"--timingCacheFile={TIMING_CACHE}", "load kernel timings from this file if present and save them after "
             "the build, so a rebuild skips re-timing"),
        Flag(f"--builderOptimizationLevel={settings.builder_optimization_level}",
             "how long the builder searches for faster kernels (0-5; 3 is TensorRT's default)"),
    ]
    if keep_specs:
        spec = ",".join(f"{name}:fp32" for name in keep_specs)
        flags += [
            Flag("--precisionConstraints=obey", "obey the per-layer precisions below, or fail the build instead of "
                 "silently running those layers in FP16"),
            Flag(f"--layerPrecisions={spec}", "compute these layers (ONNX node names; NAME* also covers the extra "
                 "layers NAME_<n> the ONNX parser made from that node, skipping those that compute no floats) in FP32"),
            Flag(f"--layerOutputTypes={spec}", "and keep their outputs FP32, so the overflow-prone result is not cast "
                 "to FP16 on the way out"),
        ]
    flags.append(Flag("--skipInference", "build and save the engine only; `edgedeploy score` measures it afterwards"))
    return flags


def command_line(settings: BuildSettings, keep_specs: list[str], int8: bool = False) -> str:
    """The one-line equivalent (for the manifest and the README)."""
    return " ".join([settings.trtexec, *(shlex.quote(f.text) for f in trtexec_flags(settings, keep_specs, int8))])


def bench_flags(settings: BuildSettings) -> list[Flag]:
    return [
        Flag(f"--loadEngine={ENGINE}", "time the engine this bundle built (no rebuild)"),
        Flag(f"--warmUp={settings.bench_warmup_ms}", "run this many milliseconds before measuring, so clocks and caches "
             "settle; those runs are not in the times"),
        Flag(f"--duration={settings.bench_duration_s}", "then measure for at least this many seconds of wall-clock time"),
        Flag("--useCudaGraph", "capture the engine's execution in a CUDA graph and launch that, as a deployed loop "
             "would (trtexec falls back to plain launches if the capture fails)"),
        Flag("--noDataTransfers", "leave out host-device copies: each time is the engine's GPU work on one image"),
        Flag(f"--exportTimes={BENCH_TIMES}", "write every measured inference (latencyMs, computeMs, ...) to this JSON "
             "file, which engine_metadata.py summarises"),
    ]


def _script_head(purpose: list[str], profile: DeviceProfile, settings: BuildSettings) -> list[str]:
    """The lines both scripts start with: what it does, where it runs, and a usable trtexec."""
    return [
        "#!/usr/bin/env bash",
        *[f"# {line}" for line in purpose],
        f"# Run this ON the Jetson (JetPack {profile.build.get('jetpack', '?')}: TensorRT {settings.tensorrt_version}, "
        f"compute capability {settings.compute_capability}).",
        f"# Written by edgedeploy {__version__}; flags as documented by trtexec --help of TensorRT 10.3.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f'TRTEXEC="${{TRTEXEC:-{settings.trtexec}}}"',
        'if [ ! -x "$TRTEXEC" ]; then',
        '  echo "trtexec not found at $TRTEXEC: run this on the Jetson (JetPack ships it), or set TRTEXEC=/path/to/trtexec" >&2',
        "  exit 1",
        "fi",
    ]


def _args(flags: list[Flag]) -> list[str]:
    lines = ["args=("]
    for flag in flags:
        lines += [f"  # {flag.text.split('=')[0]}: {flag.why}", f"  {shlex.quote(flag.text)}"]
    return lines + [")"]


def render_script(profile: DeviceProfile, settings: BuildSettings, keep_fp32: tuple[str, ...],
                  keep_specs: list[str], int8: bool = False) -> str:
    purpose = [f"Build the TensorRT engine for {profile.display_name} from model.onnx.",
               "An engine only loads on a GPU of the compute capability and the TensorRT version that built it, so an",
               "x86 host cannot build it. Writes model.engine, timing.cache, build_engine.log and model.engine.json."]
    settings_json = json.dumps(settings.to_dict(), separators=(",", ":"))
    lines = _script_head(purpose, profile, settings) + [
        f"rm -f {ENGINE}.json  # the old metadata no longer describes the engine being built",
        *_args(trtexec_flags(settings, keep_specs, int8)),
        f'"$TRTEXEC" "${{args[@]}}" 2>&1 | tee {LOG}',
        "# record TensorRT version, compute capability, precision and hashes beside the engine (and in manifest.json)",
        f"python3 {METADATA_SCRIPT} --engine {ENGINE} --onnx model.onnx --precision {'int8' if int8 else profile.precision} "
        f"--built-by trtexec --trtexec-log {LOG} --manifest manifest.json "
        f"--keep-fp32 {shlex.quote(','.join(keep_fp32))} --settings {shlex.quote(settings_json)}",
        f'echo "engine ready: $(pwd)/{ENGINE}; score it with: edgedeploy score --model {ENGINE} --bench <name> --out scores.csv"',
        "",
    ]
    return "\n".join(lines)


def render_bench_script(profile: DeviceProfile, settings: BuildSettings) -> str:
    purpose = [f"Time model.engine on {profile.display_name} with trtexec alone (no image decoding, no copies).",
               f"Writes {BENCH_TIMES} and {BENCH_LOG}; {METADATA_SCRIPT} puts the median, p90, p99, mean and images/s",
               "into manifest.json (compile.engine_bench) and prints them, beside the paper's figure for this device",
               "when the bundle holds the paper's model (recipe edgezsad-tinyvit21m-512 at 512x512)."]
    lines = _script_head(purpose, profile, settings) + [
        f'if [ ! -f {ENGINE} ]; then',
        f'  echo "{ENGINE} not found: build it first with bash {SCRIPT} (or edgedeploy engine build)" >&2',
        "  exit 1",
        "fi",
        f"rm -f {BENCH_TIMES}  # times of an earlier run must not pass for this one's",
        *_args(bench_flags(settings)),
        f'"$TRTEXEC" "${{args[@]}}" 2>&1 | tee {BENCH_LOG}',
        f"python3 {METADATA_SCRIPT} --engine {ENGINE} --bench-times {BENCH_TIMES} --manifest manifest.json "
        f"--bench-settings {shlex.quote(json.dumps(bench_settings(settings), separators=(',', ':')))}",
        "",
    ]
    return "\n".join(lines)


def bench_settings(settings: BuildSettings) -> dict:
    return {"warmup_ms": settings.bench_warmup_ms, "duration_s": settings.bench_duration_s,
            "flags": [f.text for f in bench_flags(settings)]}


def write_scripts(bundle_dir: Path, profile: DeviceProfile, settings: BuildSettings, keep_fp32: tuple[str, ...],
                  keep_specs: list[str], int8: bool = False) -> list[str]:
    """Write build_engine.sh and bench_engine.sh (executable) and the helpers they call; returns their names."""
    for name, text in ((SCRIPT, render_script(profile, settings, keep_fp32, keep_specs, int8)),
                       (BENCH_SCRIPT, render_bench_script(profile, settings))):
        write_text_atomic(bundle_dir / name, text)
        (bundle_dir / name).chmod(0o755)
    for name, module in ((METADATA_SCRIPT, engine_metadata), (LATENCY_MODULE, latency)):
        with atomic_path(bundle_dir / name) as tmp:
            shutil.copyfile(module.__file__, tmp)
    return [SCRIPT, METADATA_SCRIPT, BENCH_SCRIPT, LATENCY_MODULE]
