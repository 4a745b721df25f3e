"""build_engine.sh: every trtexec flag is one TensorRT 10.3's trtexec documents, each explained; the script runs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fakes

# Every option trtexec 10.3 documents in `trtexec --help`, read from the help text in
# NVIDIA/TensorRT tag v10.3.0, samples/common/sampleOptions.cpp (BaseModelOptions, BuildOptions,
# SystemOptions, InferenceOptions, ReportingOptions, TaskInferenceOptions and helpHelp).
TRTEXEC_10_3_FLAGS = frozenset("""
--onnx --minShapes --optShapes --maxShapes --minShapesCalib --optShapesCalib --maxShapesCalib --inputIOFormats
--outputIOFormats --memPoolSize --profilingVerbosity --avgTiming --refit --stripWeights --stripAllWeights --weightless
--versionCompatible --vc --pluginInstanceNorm --pi --useRuntime --leanDLLPath --excludeLeanRuntime --sparsity --noTF32
--fp16 --bf16 --int8 --fp8 --int4 --best --stronglyTyped --directIO --precisionConstraints --layerPrecisions
--layerOutputTypes --layerDeviceTypes --calib --safe --buildDLAStandalone --allowGPUFallback --consistency --restricted
--saveEngine --loadEngine --getPlanVersionOnly --tacticSources --noBuilderCache --noCompilationCache
--errorOnTimingCacheMiss --timingCacheFile --preview --builderOptimizationLevel --hardwareCompatibilityLevel
--runtimePlatform --tempdir --tempfileControls --maxAuxStreams --profile --calibProfile --allowWeightStreaming
--markDebug --device --useDLACore --staticPlugins --dynamicPlugins --setPluginsToSerialize --ignoreParsedPluginLibs
--shapes --loadInputs --iterations --warmUp --duration --sleepTime --idleTime --infStreams --exposeDMA --noDataTransfers
--useManagedMemory --useSpinWait --threads --useCudaGraph --timeDeserialize --timeRefit --separateProfileRun
--skipInference --persistentCacheRatio --useProfile --allocationStrategy --saveDebugTensors --weightStreamingBudget
--verbose --avgRuns --percentile --dumpRefit --dumpOutput --dumpRawBindingsToFile --dumpProfile --dumpLayerInfo
--dumpOptimizationProfile --exportTimes --exportOutput --exportProfile --exportLayerInfo --help
""".split())
# Grammar from the same help text: value-taking flags and their accepted values where fixed.
PRECISION_CONSTRAINTS = {"none", "obey", "prefer"}
MEMPOOL = re.compile(r"^(workspace|dlaSRAM|dlaLocalDRAM|dlaGlobalDRAM|tacticSharedMem):\d+(\.\d+)?[BKMG]?$")
LAYER_SPEC = re.compile(r"^[^,:]+:(fp32|fp16|bf16|int32|int8)$")


def _trtexec_args(script: str) -> list[str]:
    """The arguments of the args=( ... ) array, in order, as bash would pass them."""
    body = script.split("args=(\n", 1)[1].split("\n)\n", 1)[0]
    return [arg for line in body.splitlines() if not line.strip().startswith("#") for arg in shlex.split(line)]


def _comments(script: str) -> list[str]:
    body = script.split("args=(\n", 1)[1].split("\n)\n", 1)[0]
    return [line.strip()[2:] for line in body.splitlines() if line.strip().startswith("#")]


def test_every_flag_is_a_documented_trtexec_10_3_flag(bundles):
    args = _trtexec_args((bundles.jetson / "build_engine.sh").read_text())
    assert args, "no trtexec arguments found"
    for arg in args:
        assert arg.split("=", 1)[0] in TRTEXEC_10_3_FLAGS, f"{arg} is not a trtexec 10.3 option"


def test_script_builds_fp16_with_profile_settings(bundles):
    args = _trtexec_args((bundles.jetson / "build_engine.sh").read_text())
    assert args == ["--onnx=model.onnx", "--saveEngine=model.engine", "--fp16", "--memPoolSize=workspace:1024M",
                    "--timingCacheFile=timing.cache", "--builderOptimizationLevel=3", "--skipInference"]
    assert MEMPOOL.match(args[3].split("=", 1)[1])


def test_each_flag_is_explained_in_a_comment(bundles):
    script = (bundles.jetson / "build_engine.sh").read_text()
    flags = [arg.split("=", 1)[0] for arg in _trtexec_args(script)]
    comments = _comments(script)
    assert [c.split(":", 1)[0] for c in comments] == flags
    assert all(len(c.split(":", 1)[1].strip()) > 20 for c in comments)


def test_keep_fp32_flags_obey_constraints_and_name_layers(jetson_bundle):
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.core.model_recipes import load_recipe
    from edgedeploy.targets import prepare_target

    manifest = json.loads((jetson_bundle / "manifest.json").read_text())
    record = prepare_target(jetson_bundle, load_profile("jetson-orin-nano"), load_recipe("edgezsad-tinyvit5m-224"),
                            manifest, keep_fp32=("/stages.1/blocks/blocks.0/attn/Softmax", "/readout/ReduceSum"),
                            log=lambda line: None)
    args = _trtexec_args((jetson_bundle / "build_engine.sh").read_text())
    for arg in args:
        assert arg.split("=", 1)[0] in TRTEXEC_10_3_FLAGS
    values = dict(arg.split("=", 1) for arg in args if "=" in arg)
    assert values["--precisionConstraints"] in PRECISION_CONSTRAINTS and values["--precisionConstraints"] == "obey"
    specs = values["--layerPrecisions"].split(",")
    assert all(LAYER_SPEC.match(spec) for spec in specs)
    assert values["--layerOutputTypes"] == values["--layerPrecisions"]
    # the Softmax node may have parser-made extra layers: one wildcard, which may match nothing, covers the
    # node's own layer and those; ReduceSum has a sibling node /readout/ReduceSum_1, so a wildcard would catch
    # it: exact name only
    assert specs == ["/stages.1/blocks/blocks.0/attn/Softmax*:fp32", "/readout/ReduceSum:fp32"]
    assert all(spec.count("*") <= 1 for spec in specs)
    assert record["keep_fp32"] == ["/stages.1/blocks/blocks.0/attn/Softmax", "/readout/ReduceSum"]
    assert "--precisionConstraints=obey" in record["trtexec"]


def test_script_is_valid_bash(bundles):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(bundles.jetson / "build_engine.sh")], check=True)


def test_script_without_trtexec_says_so(jetson_bundle):
    result = subprocess.run(["bash", str(jetson_bundle / "build_engine.sh")], capture_output=True, text=True,
                            env={**os.environ, "TRTEXEC": "/nonexistent/trtexec"})
    assert result.returncode == 1
    assert result.stderr.strip() == ("trtexec not found at /nonexistent/trtexec: run this on the Jetson (JetPack ships "
                                     "it), or set TRTEXEC=/path/to/trtexec")


FAKE_TRTEXEC = """#!/usr/bin/env bash
# records its arguments, prints the version banner trtexec prints, writes a plan-shaped file
printf '%s\\n' "$@" > trtexec_args.txt
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec $*"
for a in "$@"; do case "$a" in --saveEngine=*) python3 -c "import sys; sys.stdout.buffer.write(bytes.fromhex('66747274') + bytes(20) + bytes([10,3,0,30]) + b'{}')" > "${a#--saveEngine=}";; esac; done
echo "&&&& PASSED TensorRT.trtexec"
"""


def test_script_runs_unchanged_with_trtexec_and_writes_metadata(jetson_bundle, tmp_path):
    """Run build_engine.sh as on the Jetson: trtexec (faked), python3 with tensorrt (faked), libcuda (stub)."""
    lib = fakes.compile_stub_libcuda(tmp_path / "lib", 8, 7, "Orin (nvgpu)")
    if lib is None:
        pytest.skip("no C compiler for the libcuda stub")
    trtexec = tmp_path / "bin" / "trtexec"
    trtexec.parent.mkdir()
    trtexec.write_text(FAKE_TRTEXEC)
    trtexec.chmod(0o755)
    python_dir = tmp_path / "pybin"  # make `python3` in the script this interpreter
    python_dir.mkdir()
    (python_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "TRTEXEC": str(trtexec), "LD_LIBRARY_PATH": str(lib.parent),
           "PYTHONPATH": str(fakes.FAKE_MODULES), "PATH": f"{python_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "build_engine.sh"], cwd=jetson_bundle, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    passed = (jetson_bundle / "trtexec_args.txt").read_text().split()
    assert passed == _trtexec_args((jetson_bundle / "build_engine.sh").read_text())
    meta = json.loads((jetson_bundle / "model.engine.json").read_text())
    assert meta["compute_capability"] == "8.7" and meta["gpu"] == "Orin (nvgpu)"
    assert meta["tensorrt_version"] == "10.3.0.30" and meta["precision"] == "fp16" and meta["built_by"] == "trtexec"
    manifest = json.loads((jetson_bundle / "manifest.json").read_text())
    assert meta["onnx_sha256"] == manifest["model"]["sha256"]
    assert manifest["compile"]["engine"] == meta and manifest["compile"]["status"] == "engine-built"
    assert meta["settings"] == {"workspace_mib": 1024, "builder_optimization_level": 3, "timing_cache": "timing.cache"}


def test_metadata_reads_trtexec_banner_without_tensorrt_package(tmp_path):
    from edgedeploy.runtime.engine_metadata import tensorrt_version

    log = tmp_path / "build_engine.log"
    log.write_text("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=model.onnx\n")
    code = "import sys; sys.modules['tensorrt'] = None; from edgedeploy.runtime.engine_metadata import " \
           f"tensorrt_version; print(tensorrt_version({str(log)!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "10.3.0"
    assert tensorrt_version is not None


def test_metadata_script_refuses_without_gpu(tmp_path, jetson_bundle):
    (jetson_bundle / "model.engine").write_bytes(fakes.fake_plan())
    env = {**os.environ, "PYTHONPATH": str(fakes.FAKE_MODULES), "LD_LIBRARY_PATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "engine_metadata.py", "--engine", "model.engine", "--onnx", "model.onnx"],
                            cwd=jetson_bundle, capture_output=True, text=True, env=env)
    if result.returncode == 0:
        pytest.skip("this machine has a CUDA driver")
    assert result.stderr.strip().startswith("error: no CUDA GPU visible")
    assert not (jetson_bundle / "model.engine.json").exists()


def test_bundle_copy_of_metadata_helper_is_the_package_module(bundles):
    from edgedeploy.runtime import engine_metadata, latency

    assert (bundles.jetson / "engine_metadata.py").read_text() == Path(engine_metadata.__file__).read_text()
    assert (bundles.jetson / "latency.py").read_text() == Path(latency.__file__).read_text()


def test_bench_script_times_the_engine_with_documented_flags(bundles):
    script = (bundles.jetson / "bench_engine.sh").read_text()
    args = _trtexec_args(script)
    assert all(arg.split("=", 1)[0] in TRTEXEC_10_3_FLAGS for arg in args)
    assert args == ["--loadEngine=model.engine", "--warmUp=2000", "--duration=10", "--useCudaGraph",
                    "--noDataTransfers", "--exportTimes=times.json"]  # warm-up and duration from the profile
    comments = _comments(script)
    assert [c.split(":", 1)[0] for c in comments] == [a.split("=", 1)[0] for a in args]
    assert 'TRTEXEC="${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}"' in script  # the profile's build.trtexec
    subprocess.run(["bash", "-n", str(bundles.jetson / "bench_engine.sh")], check=True)


def test_bench_script_without_an_engine_says_so(jetson_bundle, tmp_path):
    trtexec = tmp_path / "trtexec"
    trtexec.write_text("#!/bin/sh\n")
    trtexec.chmod(0o755)
    result = subprocess.run(["bash", "bench_engine.sh"], cwd=jetson_bundle, capture_output=True, text=True,
                            env={**os.environ, "TRTEXEC": str(trtexec)})
    assert result.returncode == 1
    assert result.stderr.strip() == "model.engine not found: build it first with bash build_engine.sh (or edgedeploy engine build)"


def _export_times(path: Path, latencies_ms: list[float]) -> None:
    """A file as trtexec 10.3 --exportTimes writes it (sampleReporting.cpp exportJSONTrace): '[', one record per
    line, the first led by two spaces and the others by ', ', then ']'."""
    fields = ("startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs", "startD2hMs",
              "endD2hMs")
    lines, start = ["["], 100.0
    for i, ms in enumerate(latencies_ms):
        stamps = dict(zip(fields, (start, start + 0.01, start, start, start, start + ms, start + ms, start + ms)))
        body = ", ".join(f'"{k}" : {v:g}' for k, v in stamps.items())
        lines.append(("  " if i == 0 else ", ") + "{ " + body + f', "h2dMs" : 0, "computeMs" : {ms:g}, "d2hMs" : 0, '
                     f'"latencyMs" : {ms:g} }}')
        start += ms + 0.05
    path.write_text("\n".join(lines + ["]"]) + "\n")


def test_metadata_summarises_trtexec_times(tmp_path):
    from edgedeploy.runtime.engine_metadata import summarise_times

    latencies = [30.0 + 0.1 * (i % 7) + (5.0 if i == 3 else 0.0) for i in range(40)]
    _export_times(tmp_path / "times.json", latencies)
    (tmp_path / "model.engine").write_bytes(b"plan")
    bench = summarise_times(str(tmp_path / "times.json"), str(tmp_path / "model.engine"),
                            {"warmup_ms": 2000, "duration_s": 10, "flags": ["--useCudaGraph"]})
    for key, q in (("latency_ms_p50", 50), ("latency_ms_p90", 90), ("latency_ms_p99", 99)):
        assert bench[key] == pytest.approx(float(np.percentile(latencies, q)), abs=1e-3)
    assert bench["latency_ms_mean"] == pytest.approx(np.mean(latencies), abs=1e-3)
    assert bench["images_per_s"] == pytest.approx(1000 / np.mean(latencies), abs=0.01)
    assert bench["latency_images"] == 40 and bench["warmup_ms"] == 2000 and bench["times_file"] == "times.json"


@pytest.mark.parametrize("content, message", [
    ("[]", "holds no inference records"), ("{not json", "is not readable JSON"),
    ('[{"computeMs": 1.0}]', "a record without a numeric latencyMs")])
def test_bad_times_file_is_one_line(tmp_path, jetson_bundle, content, message):
    (jetson_bundle / "times.json").write_text(content)
    (jetson_bundle / "model.engine").write_bytes(b"plan")
    result = subprocess.run([sys.executable, "engine_metadata.py", "--engine", "model.engine", "--bench-times",
                             "times.json", "--manifest", "manifest.json"], cwd=jetson_bundle, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and message in result.stderr
    assert "engine_bench" not in json.loads((jetson_bundle / "manifest.json").read_text())["compile"]


FAKE_BENCH_TRTEXEC = """#!/usr/bin/env bash
# records its arguments and writes --exportTimes from the times the test left in fake_times.json
printf '%s\\n' "$@" > trtexec_args.txt
for a in "$@"; do case "$a" in --exportTimes=*) cp fake_times.json "${a#--exportTimes=}";; esac; done
echo "&&&& PASSED TensorRT.trtexec"
"""


def _claim_the_papers_model(bundle):
    """The small bundle's manifest made to say what a build of the default recipe says (the 512 build takes minutes)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["recipe"].update(name="edgezsad-tinyvit21m-512", input_size=512)
    manifest["model"]["card"]["input_size"] = 512
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("papers_model", [False, True], ids=["224-recipe", "paper-512"])
def test_bench_script_records_the_summary_beside_the_papers_figure(jetson_bundle, tmp_path, papers_model):
    """The paper's figure is printed for the paper's model only (TinyViT-21M-512 at 512x512), not for the 224 recipe."""
    if papers_model:
        _claim_the_papers_model(jetson_bundle)
    trtexec = tmp_path / "trtexec"
    trtexec.write_text(FAKE_BENCH_TRTEXEC)
    trtexec.chmod(0o755)
    (jetson_bundle / "model.engine").write_bytes(fakes.fake_plan())
    latencies = [31.0, 32.0, 33.0, 34.0, 36.0]
    _export_times(jetson_bundle / "fake_times.json", latencies)
    python_dir = tmp_path / "pybin"
    python_dir.mkdir()
    (python_dir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the bundle's files, as on a bare Jetson
    result = subprocess.run(["bash", "bench_engine.sh"], cwd=jetson_bundle, capture_output=True, text=True,
                            env={**env, "TRTEXEC": str(trtexec), "PATH": f"{python_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert (jetson_bundle / "trtexec_args.txt").read_text().split() == _trtexec_args(
        (jetson_bundle / "bench_engine.sh").read_text())
    manifest = json.loads((jetson_bundle / "manifest.json").read_text())
    bench = manifest["compile"]["engine_bench"]
    assert bench["latency_ms_p50"] == 33.0 and bench["latency_images"] == 5 and bench["duration_s"] == 10
    assert bench["engine_sha256"] == hashlib.sha256(fakes.fake_plan()).hexdigest()
    assert "--useCudaGraph" in bench["flags"]
    if not papers_model:
        measured = result.stdout.strip().splitlines()[-1]
        assert "paper" not in result.stdout
    else:
        measured, reference = result.stdout.strip().splitlines()[-2:]
        assert reference == (f"reference, the paper's figure, not measured here: 32.8 ms per image on "
                             f"{manifest['target']['display_name']} ({manifest['target']['reference_latency']['source']})")
    assert measured.startswith("latency (trtexec --exportTimes latencyMs") and "5 images after a 2000 ms warm-up" in measured
    assert "median 33.00 ms" in measured


def test_a_new_engine_drops_the_old_benchmark(tmp_path):
    from edgedeploy.runtime.engine_metadata import record_bench, record_in_manifest

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"target": {"name": "jetson-orin-nano"}, "compile": {}}))
    record_bench(str(manifest), {"latency_ms_p50": 1.0})
    assert json.loads(manifest.read_text())["compile"]["engine_bench"] == {"latency_ms_p50": 1.0}
    record_in_manifest(str(manifest), {"engine": "model.engine"})
    assert "engine_bench" not in json.loads(manifest.read_text())["compile"]


def test_readme_tells_what_to_copy_and_run(bundles):
    readme = (bundles.jetson / "README.md").read_text()
    assert "scp -r jetson-orin-nano jetson:~/" in readme and "`bash build_engine.sh`" in readme
    assert "edgedeploy engine build" in readme and "edgedeploy score --model model.engine" in readme
    assert "compute capability\n8.7" in readme or "compute capability 8.7" in readme.replace("\n", " ")
    assert "| `build_engine.sh` |" in readme
    assert "paper" not in readme  # the paper's latency is for its 512 model, not this 224 bundle
    manifest = json.loads((bundles.jetson / "manifest.json").read_text())
    assert manifest["compile"]["trtexec"] in readme and manifest["compile"]["status"] == "script-written"
