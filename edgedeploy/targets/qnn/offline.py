"""The offline half of the RB5 Gen2 bundle: QAIRT commands and an AI Hub job script, to run elsewhere.

``build_qnn.sh`` follows the QNN SDK's own flow (QAIRT/QNN 2.25.0.240728 docs: docs/QNN/general/tools.html,
converters.html and gpu/gpu_backend.html): ``qnn-onnx-converter --float_bitwidth 16`` turns the ONNX graph
into QNN model source with 16-bit float tensors, ``qnn-model-lib-generator`` compiles it into a model
library for the board's toolchain, and ``qnn-net-run`` runs it on the GPU backend
(``libQnnGpu.so``) with the backend extension's ``precision_mode: fp16``. No context binary is
made: that is an HTP (NPU) artifact. ``submit_hub_jobs.py`` does what ``edgedeploy build`` does
when AI Hub is reachable: compile to a DLC, profile on the GPU at FP16.

Two facts of that SDK the script acts on:

* The legacy converters turn 4-D inputs channel-last (NHWC) unless told otherwise; converters.html
  ("Preserve I/O") documents ``--preserve_io layout`` (no tensor names) as keeping the source model's
  layout for every input and output, so the board reads the same NCHW float32 files the host feeds.
  Only the layout is preserved: the datatype is left to the converter, and qnn-net-run parses input
  files as float32 unless ``--use_native_input_files`` is given.
* ``qnn-model-lib-generator -t aarch64-oe-linux-gcc11.2`` compiles with the cross g++ found under
  ``$QNN_AARCH64_LINUX_OE_GCC_112/sysroots/`` (the generator's target table; tutorial2.html), i.e. the
  Qualcomm Linux eSDK; the script checks for it before the long conversion.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgedeploy import __version__
from edgedeploy.core.files import write_text_atomic
from edgedeploy.core.profiles import DeviceProfile
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.targets.qnn.settings import HubSettings

BUILD_SCRIPT = "build_qnn.sh"
HUB_SCRIPT = "submit_hub_jobs.py"
GRAPH_NAME = "model"  # the converter names the graph after its output file, qnn/model.cpp
OE_LINUX_TARGET = "aarch64-oe-linux-gcc11.2"
ESDK_ENV = "QNN_AARCH64_LINUX_OE_GCC_112"  # read by qnn-model-lib-generator for that target
ESDK_GXX = "sysroots/x86_64-qtisdk-linux/usr/bin/aarch64-oe-linux/aarch64-oe-linux-g++"


def render_build_qnn(profile: DeviceProfile, settings: HubSettings) -> str:
    gpu_config = json.dumps({"graph_names": [GRAPH_NAME], "precision_mode": "fp16"})
    net_run_config = json.dumps({"backend_extensions": {"shared_library_path": "libQnnGpuNetRunExtensions.so",
                                                        "config_file_path": "gpu_config.json"}})
    return script_prologue(profile, settings, "", "; the last step runs on the board. Steps as documented for QNN "
                           "2.25.") + f"""
# 1. ONNX -> QNN model source (qnn/model.cpp) and weights (qnn/model.bin); --float_bitwidth 16 stores
#    float parameters and activations as 16-bit floats, the GPU's FP16 precision; --preserve_io layout keeps
#    every input and output in the ONNX model's layout (NCHW) instead of the converter's channel-last default.
qnn-onnx-converter --input_network model.onnx --output_path qnn/model.cpp --float_bitwidth 16 --preserve_io layout

# 2. Compile the model library for the board (qnn/libs/$QNN_TARGET/lib{GRAPH_NAME}.so, named after model.bin).
qnn-model-lib-generator -c qnn/model.cpp -b qnn/model.bin -t "$QNN_TARGET" -o qnn/libs

# 3. GPU backend settings for qnn-net-run: FP16 precision mode for graph '{GRAPH_NAME}'.
echo '{gpu_config}' > qnn/gpu_config.json
echo '{net_run_config}' > qnn/net_run_config.json

# 4. On the RB5 Gen2: copy qnn/libs/$QNN_TARGET/, qnn/*.json, and from $QNN_SDK_ROOT/lib/$QNN_TARGET/
#    libQnnGpu.so and libQnnGpuNetRunExtensions.so plus $QNN_SDK_ROOT/bin/$QNN_TARGET/qnn-net-run, then run
#    (input_list.txt lists raw float32 1x3xSxS files in NCHW order, one per line, fed as `edgedeploy score` feeds
#    the graph: the model card's pre-processing, manifest.json model.card):
cat <<EOF
QNN model library ready in qnn/libs/$QNN_TARGET/. On the board run:
  LD_LIBRARY_PATH=. ./qnn-net-run --backend libQnnGpu.so --model lib{GRAPH_NAME}.so --input_list input_list.txt --config_file net_run_config.json
EOF
"""


def script_prologue(profile: DeviceProfile, settings: HubSettings, path: str, notes: str) -> str:
    """The lines both QAIRT scripts (GPU and HTP) open with: what they do, the SDK check, the board's toolchain
    and the eSDK check, so that each stops before any work when the SDK is missing."""
    return f"""#!/usr/bin/env bash
# Convert model.onnx for {profile.display_name} with the QAIRT / QNN SDK, without AI Hub{path}.
# Written by edgedeploy {__version__}. Needs the QNN SDK (QNN_SDK_ROOT set, `source $QNN_SDK_ROOT/bin/envsetup.sh`)
# on an x86-64 Linux host{notes}
set -euo pipefail
cd "$(dirname "$0")"
: "${{QNN_SDK_ROOT:?set QNN_SDK_ROOT to the QNN SDK folder and source its bin/envsetup.sh}}"
# toolchain of the board's OS image (Qualcomm Linux on the QCS8550); override e.g. QNN_TARGET=aarch64-ubuntu-gcc9.4
QNN_TARGET="${{QNN_TARGET:-{settings.lib_target}}}"
mkdir -p qnn

{esdk_check()}"""


def esdk_check() -> str:
    """Bash lines that stop the script before any work when the toolchain is the Qualcomm Linux one and its
    eSDK's cross g++ is not where qnn-model-lib-generator looks for it (other targets pass)."""
    return f"""if [ "$QNN_TARGET" = "{OE_LINUX_TARGET}" ] && [ ! -x "${{{ESDK_ENV}:-/nonexistent}}/{ESDK_GXX}" ]; then
  echo "QNN_TARGET {OE_LINUX_TARGET} needs the Qualcomm Linux eSDK (its cross g++ 11.2): install it and set {ESDK_ENV} to its folder (the one holding sysroots/), or set QNN_TARGET=aarch64-ubuntu-gcc9.4 for an Ubuntu image" >&2
  exit 1
fi"""


def render_build_qnn_htp(profile: DeviceProfile, settings: HubSettings) -> str:
    """The HTP (NPU) variant: the QDQ (or float) model.onnx -> QNN model library -> an HTP context binary."""
    soc, arch = (profile.qnn or {}).get("soc_model", 66), (profile.qnn or {}).get("htp_arch", 73)
    notes = (". UNVERIFIED here (no QAIRT install on the build host): the tool names and options follow the\n"
             "# QNN SDK's documented flow (converter -> model library -> qnn-context-binary-generator), not a run of them.\n"
             "# A QDQ model.onnx carries its own quantisation (the converter reads the Q/DQ encodings): no --input_list.")
    return script_prologue(profile, settings, ": the HTP (NPU) path", notes) + f"""
# 1. ONNX -> QNN model source; --preserve_io layout keeps the inputs and outputs NCHW as the host feeds them.
qnn-onnx-converter --input_network model.onnx --output_path qnn/model.cpp --preserve_io layout

# 2. The model library, for this host (the context generator runs here) and for the board.
qnn-model-lib-generator -c qnn/model.cpp -b qnn/model.bin -t x86_64-linux-clang -o qnn/libs
qnn-model-lib-generator -c qnn/model.cpp -b qnn/model.bin -t "$QNN_TARGET" -o qnn/libs

# 3. The HTP context binary for the board's Hexagon (soc_model {soc}, HTP v{arch}): qnn/{GRAPH_NAME}_htp.bin
qnn-context-binary-generator --backend libQnnHtp.so --model qnn/libs/x86_64-linux-clang/lib{GRAPH_NAME}.so --binary_file {GRAPH_NAME}_htp --output_dir qnn

cat <<EOF
QNN HTP context ready: qnn/{GRAPH_NAME}_htp.bin. On the board (libQnnHtp.so, libQnnHtpV{arch}Stub.so and the V{arch} skel):
  ./qnn-net-run --backend libQnnHtp.so --retrieve_context {GRAPH_NAME}_htp.bin --input_list input_list.txt
EOF
"""


def render_hub_script(recipe: Recipe, settings: HubSettings) -> str:
    size = recipe.card.input_size
    what = ("compile model.onnx to a QNN context binary for the HTP (NPU), profile it on the NPU" if settings.htp else
            "compile model.onnx to a QNN DLC, profile it on the GPU at FP16")
    return f'''"""Submit this bundle's Qualcomm AI Hub jobs: {what}.

Written by edgedeploy {__version__}. Needs `pip install qai-hub` and `qai-hub configure --api_token TOKEN`.
Writes {settings.artifact} and hub_profile.json beside this file. `edgedeploy build` does the same (and records the
jobs in manifest.json, reusing them on a rerun) wherever AI Hub is reachable.
"""
import inspect
import json
import sys
from pathlib import Path

import qai_hub as hub

HERE = Path(__file__).resolve().parent
DEVICE = {settings.device!r}
INPUT_SPECS = {{{recipe.card.input_name!r}: ((1, 3, {size}, {size}), "float32")}}
COMPILE_OPTIONS = {settings.compile_options!r}
PROFILE_OPTIONS = {settings.run_options!r}


def finished(job, what):
    status = job.wait()
    if not status.success:
        sys.exit(f"AI Hub {{what}} job {{job.job_id}} failed: {{status.message}} ({{job.url}})")
    return job


def main():
    device = hub.Device(DEVICE)
    model = hub.upload_model(str(HERE / "model.onnx"))
    compile_job = finished(hub.submit_compile_job(model=model, device=device, name={recipe.name + "-compile"!r},
                                                  input_specs=INPUT_SPECS, options=COMPILE_OPTIONS), "compile")
    compile_job.download_target_model(str(HERE / {settings.artifact!r}))
    target, name = compile_job.get_target_model(), {recipe.name + "-profile"!r}
    if "profile" in inspect.signature(hub.submit_inference_job).parameters:  # qai-hub >= 0.56
        job = hub.submit_inference_job(model=target, device=device, inputs=None, name=name, options=PROFILE_OPTIONS,
                                       profile=True)
    else:  # older clients: the profile job call 0.56 deprecates
        job = hub.submit_profile_job(model=target, device=device, name=name, options=PROFILE_OPTIONS)
    profile_job = finished(job, "profile")
    summary = (profile_job.download_profile() or {{}}).get("execution_summary") or {{}}  # the client can return {{}}
    latency, peak = summary.get("estimated_inference_time"), summary.get("estimated_inference_peak_memory")
    record = {{"device": DEVICE, "compile_job": compile_job.job_id, "profile_job": profile_job.job_id,
              "latency_ms": None if latency is None else latency / 1000.0,
              "peak_memory_mib": None if peak is None else peak / 2**20}}
    (HERE / "hub_profile.json").write_text(json.dumps(record, indent=2) + "\\n")
    if latency is None:
        print(f"{settings.artifact} written; the profile job returned no execution summary: see {{profile_job.url}}")
    else:
        print(f"{settings.artifact} written; {{DEVICE}} {settings.compute_unit.upper()}: {{record['latency_ms']:.1f}} ms, "
              f"{{record['peak_memory_mib'] or 0:.0f}} MiB peak")


if __name__ == "__main__":
    main()
'''


def write_offline(bundle_dir: Path, profile: DeviceProfile, recipe: Recipe, settings: HubSettings) -> list[str]:
    script = bundle_dir / BUILD_SCRIPT
    write_text_atomic(script, render_build_qnn_htp(profile, settings) if settings.htp else render_build_qnn(profile, settings))
    script.chmod(0o755)
    write_text_atomic(bundle_dir / HUB_SCRIPT, render_hub_script(recipe, settings))
    return [BUILD_SCRIPT, HUB_SCRIPT]
