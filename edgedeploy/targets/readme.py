"""The "What runs next" section of a bundle's README, per runtime and compile outcome."""

from __future__ import annotations

from edgedeploy.core.profiles import DeviceProfile


FILES = {
    "build_engine.sh": "the trtexec command that builds `model.engine` on the Jetson, each flag explained",
    "engine_metadata.py": "run by build_engine.sh: writes `model.engine.json` (TensorRT version, compute capability, hashes); "
                          "run by bench_engine.sh: summarises trtexec's times into `manifest.json`",
    "bench_engine.sh": "times `model.engine` with trtexec alone (CUDA graph, no copies) into `times.json`; median, p90, "
                       "p99, mean and images/s go into `manifest.json` (`compile.engine_bench`)",
    "latency.py": "the latency statistics engine_metadata.py uses (standard library only)",
    "build_qnn.sh": "the QAIRT/QNN SDK steps: ONNX -> 16-bit float QNN model -> model library -> GPU backend run",
    "submit_hub_jobs.py": "submits the AI Hub compile and profile jobs (needs qai-hub and an API token)",
}


def file_rows(manifest: dict) -> str:
    record = manifest.get("compile") or {}
    rows = [f"| `{name}` | {FILES.get(name, '')} |" for name in record.get("scripts", [])]
    if record.get("engine"):
        rows.append("| `model.engine` | the TensorRT FP16 engine; `model.engine.json` says where it can load |")
    if record.get("dlc"):
        rows.append("| `model.dlc` | the QNN DLC compiled by AI Hub; `hub_jobs.json` lists the jobs |")
    ctx = record.get("qnn_context") or {}
    if ctx.get("status") == "built":
        rows.append(f"| `{ctx['path']}` | the graph compiled ahead of time for the board's Hexagon HTP (ONNX Runtime EP "
                    f"context, QNN SDK {ctx.get('qnn_sdk')}, soc_model {ctx.get('soc_model')}, HTP v{ctx.get('htp_arch')}, "
                    f"{str(ctx.get('precision', '')).upper()}); loads with the same onnxruntime-qnn without compiling |")
    return "".join(row + "\n" for row in rows)


def next_steps(profile: DeviceProfile, manifest: dict) -> str:
    record = manifest.get("compile") or {}
    if profile.runtime == "tensorrt":
        return _tensorrt(profile, record, manifest)
    return _qnn(profile, record)


def _tensorrt(profile: DeviceProfile, record: dict, manifest: dict) -> str:
    req = record.get("requires", {})
    keep = record.get("keep_fp32") or []
    kept = (f"\n{len(keep)} node(s) stay in FP32 (`--keep-fp32`): " + ", ".join(f"`{n}`" for n in keep[:5])
            + (" ..." if len(keep) > 5 else "") + ".\n") if keep else ""
    built = record.get("status") == "engine-built"
    step2 = ("`model.engine` is already built (see `model.engine.json`)." if built else
             "On the Jetson, in the copied folder: `bash build_engine.sh`. It runs trtexec "
             "(`/usr/src/tensorrt/bin/trtexec`, part of JetPack; every flag is explained in the script) and then "
             "`engine_metadata.py`, which writes `model.engine.json` (TensorRT version, compute capability, "
             "precision, hashes) and records the engine in `manifest.json`. With edgedeploy installed on the "
             "Jetson (no PyTorch needed), `edgedeploy engine build <this folder>` does the same through the "
             "TensorRT Python API.")
    return f"""The target runs TensorRT {req.get('tensorrt', profile.runtime_version)} at FP16 on a GPU of compute capability
{req.get('compute_capability', '?')} (JetPack {req.get('jetpack', '?')}). A TensorRT engine only loads on a GPU of the compute
capability and the TensorRT major.minor it was built with, so it is built on the Jetson itself.
{kept}
1. Copy this folder to the Jetson, e.g. `scp -r {profile.name} jetson:~/`.
2. {step2}
3. Score a benchmark on the Jetson: `edgedeploy score --model model.engine --bench mvtec --data-root <MVTec-AD> --out device_scores.csv`
   (TensorRT, numpy and Pillow; no PyTorch), then compare with the host using `edgedeploy fidelity --device-scores device_scores.csv`.
   Scoring `model.onnx` with ONNX Runtime works anywhere: `edgedeploy score --model model.onnx ...`.
4. Time the engine alone on the Jetson: `bash bench_engine.sh` (trtexec `--loadEngine --warmUp --duration --useCudaGraph
   --noDataTransfers --exportTimes`); it prints the median, p90, p99, mean and images/s{_reference(profile, manifest)} and records
   them in `manifest.json` under `compile.engine_bench`.

The equivalent trtexec command: `{record.get('trtexec', '')}`
"""


def _qnn(profile: DeviceProfile, record: dict) -> str:
    device = record.get("hub_device", "QCS8550 (Proxy)")
    if record.get("status") == "compiled":
        jobs, prof = record["jobs"], record.get("profile") or {}
        latency = prof.get("latency_ms")
        done = (f"`model.dlc` was compiled by AI Hub compile job `{jobs['compile']['job_id']}` for `{device}` "
                f"(`{record.get('compile_options')}`) and profiled by job `{jobs['profile']['job_id']}` "
                f"(`{record.get('profile_options')}`)"
                + (f": {latency:.1f} ms per image" if latency is not None else "") + ". The jobs are listed in "
                "`hub_jobs.json`; a rebuild of the same model.onnx reuses them.")
    else:
        done = ("AI Hub was not used for this build (see the build's output for why). To compile with AI Hub: "
                "`pip install qai-hub`, `qai-hub configure --api_token TOKEN`, then rerun `edgedeploy build` "
                "(or run `python submit_hub_jobs.py` here). Without AI Hub: `bash build_qnn.sh`. " + _offline_needs(profile, record))
    note = record.get("hub_device_note")
    return f"""The target runs the model on the Adreno GPU through the QNN GPU backend at FP16 ({device} on AI Hub,
compile option `{record.get('compile_options', '--target_runtime qnn_dlc')}`, run options `{record.get('profile_options', '')}`).
{f"AI Hub's `{device}` is {note}." if note else ""}

1. {done}
2. Score a benchmark on the device through AI Hub inference jobs: `edgedeploy score --model model.dlc --bench mvtec
   --data-root <MVTec-AD> --out device_scores.csv`, then `edgedeploy fidelity --device-scores device_scores.csv`.
   Scoring `model.onnx` with ONNX Runtime works anywhere: `edgedeploy score --model model.onnx ...`.
{_qnn_runtime(record)}"""


def _qnn_runtime(record: dict) -> str:
    """Step 3: Qualcomm's runtime on the board itself, through ONNX Runtime's QNN execution provider (onnxruntime-qnn)."""
    ctx = record.get("qnn_context") or {}
    if ctx.get("status") == "built":
        aot = (f"`{ctx['path']}` is the HTP context compiled on the host (QNN SDK {ctx.get('qnn_sdk')}, onnxruntime-qnn "
               f"{ctx.get('onnxruntime_qnn')}): `edgedeploy score --model {ctx['path']} --runtime qnn-htp ...` loads it "
               "without compiling; the board needs the same onnxruntime-qnn (another QNN SDK is refused).")
    else:
        aot = ("No HTP context was compiled ahead of time for this bundle"
               + (f" ({ctx['reason']})" if ctx.get("reason") else "") + "; `--runtime qnn-htp` compiles `model.onnx` "
               "when the session starts.")
    return f"""3. On the board itself, with no AI Hub and no QAIRT install: ONNX Runtime's QNN execution provider. Python 3.11 or
   later (aarch64, glibc 2.34+), then `pip install 'edgedeploy[qnn]'` (onnxruntime-qnn; the wheel ships the QNN
   libraries and the Hexagon V73 skel). The board image must provide `libcdsprpc.so` and a running CDSP (its firmware)
   for the HTP, and the Adreno OpenCL driver (`libOpenCL.so`, `/dev/kgsl-3d0`) for the GPU; leave `ADSP_LIBRARY_PATH`
   unset (the EP points it at the wheel's folder). Then
   `edgedeploy score --model model.onnx --runtime qnn-gpu --bench mvtec --data-root <MVTec-AD> --out gpu.csv` (the GPU
   at FP16, the paper's path) or `--runtime qnn-htp` (the HTP at FP16); a graph QNN takes only in part is refused,
   naming the nodes, unless `--allow-cpu-fallback`. {aot}
"""


def _offline_needs(profile: DeviceProfile, record: dict) -> str:
    from edgedeploy.targets.qnn.offline import ESDK_ENV, OE_LINUX_TARGET

    target = record.get("qnn_lib_target")
    esdk = (f"The board toolchain `{target}` also needs the Qualcomm Linux eSDK (its cross g++ 11.2) with "
            f"`{ESDK_ENV}` set to its folder; the script stops first without it "
            "(`QNN_TARGET=aarch64-ubuntu-gcc9.4` builds for an Ubuntu image instead). ") if target == OE_LINUX_TARGET else ""
    return (f"It needs the QAIRT/QNN SDK {profile.runtime_version} on an x86-64 Linux host (`QNN_SDK_ROOT` set, "
            "`source $QNN_SDK_ROOT/bin/envsetup.sh`). " + esdk +
            "It runs `qnn-onnx-converter --float_bitwidth 16 --preserve_io layout` (inputs stay NCHW, as the host "
            "feeds them), `qnn-model-lib-generator`, and prints the `qnn-net-run` line for the board: GPU backend "
            "`libQnnGpu.so` in FP16 mode, `input_list.txt` naming raw float32 1x3xSxS files.")


def _reference(profile: DeviceProfile, manifest: dict) -> str:
    """The paper's figure for the device, named only for the paper's model (the same rule as bench_engine.sh's)."""
    from edgedeploy.runtime.latency import manifest_is_paper_model

    ref = profile.reference_latency if manifest_is_paper_model(manifest) else None
    return f" beside the paper's figure for this device ({ref['ms']:g} ms, a reference, not ours)" if ref else ""
