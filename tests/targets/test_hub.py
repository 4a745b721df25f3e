"""RB5 Gen2 through Qualcomm AI Hub (faked): exact devices and options, job reuse, offline fallback, failures."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import fakes
from edgedeploy.cli import main
from edgedeploy.runtime.scorefile import read_scores

SMALL = "edgezsad-tinyvit5m-224"
DEVICE = "QCS8550 (Proxy)"
QAIRT = "2.25"  # the rb5-gen2 profile's build.qairt_version
COMPILE_OPTIONS = f"--target_runtime qnn_dlc --qairt_version {QAIRT}"
RUN_OPTIONS = f"--compute_unit gpu --qnn_options default_graph_gpu_precision=FLOAT16 --qairt_version {QAIRT}"


def _build(out, *extra):
    return CliRunner().invoke(main, ["build", "--target", "rb5-gen2", "--recipe", SMALL, "--out", str(out), *extra])


def _calls(hub, name):
    return [c for c in hub.STATE["calls"] if c["call"] == name]


def test_build_compiles_and_profiles_on_the_right_device_with_exact_options(fake_hub, out_dir):
    result = _build(out_dir)
    assert result.exit_code == 0, result.output
    (upload,) = _calls(fake_hub, "upload_model")
    assert upload["model"] == str(out_dir / "rb5-gen2" / "model.onnx")
    (compile_call,) = _calls(fake_hub, "submit_compile_job")
    assert compile_call["device"] == {"device": DEVICE}
    assert compile_call["options"] == COMPILE_OPTIONS
    assert compile_call["input_specs"] == {"image": [[1, 3, 224, 224], "float32"]}
    (profile_call,) = _calls(fake_hub, "submit_inference_job")  # qai-hub 0.56: submit_profile_job is deprecated
    assert profile_call["device"] == {"device": DEVICE} and profile_call["options"] == RUN_OPTIONS
    assert profile_call["profile"] is True and profile_call["inputs"] is None
    assert _calls(fake_hub, "submit_profile_job (deprecated)") == []

    bundle = out_dir / "rb5-gen2"
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["compile"]
    assert record["status"] == "compiled" and record["hub_device"] == DEVICE
    assert record["compile_options"] == COMPILE_OPTIONS and record["profile_options"] == RUN_OPTIONS
    compile_job, profile_job = record["jobs"]["compile"], record["jobs"]["profile"]
    assert compile_job["job_id"] == fake_hub.STATE["calls"][[c["call"] for c in fake_hub.STATE["calls"]].index(
        "CompileJob.wait")]["job_id"]
    assert compile_job["status"] == profile_job["status"] == "SUCCESS" and not compile_job["reused"]
    assert compile_job["url"].startswith("https://app.aihub.qualcomm.com/jobs/")
    assert record["profile"]["latency_ms"] == pytest.approx(140.25)
    assert record["profile"]["peak_memory_mib"] == pytest.approx(50.0)
    assert (bundle / "model.dlc").read_bytes().startswith(b"FAKEDLC:")
    assert record["dlc"]["path"] == "model.dlc" and len(record["dlc"]["sha256"]) == 64
    assert not list(bundle.glob(".dlc-*"))  # the download folder is gone
    assert f"compile job {compile_job['job_id']}" in result.output and "140.2 ms" in result.output
    readme = (bundle / "README.md").read_text()
    assert compile_job["job_id"] in readme and "`model.dlc`" in readme


def test_second_build_reuses_the_jobs(fake_hub, out_dir):
    assert _build(out_dir).exit_code == 0
    first = json.loads((out_dir / "rb5-gen2" / "manifest.json").read_text())["compile"]
    fake_hub.STATE["calls"].clear()
    result = _build(out_dir)
    assert result.exit_code == 0, result.output
    assert fake_hub.STATE["calls"] == []  # nothing submitted, nothing even asked
    second = json.loads((out_dir / "rb5-gen2" / "manifest.json").read_text())["compile"]
    assert second["jobs"]["compile"]["job_id"] == first["jobs"]["compile"]["job_id"]
    assert second["jobs"]["profile"]["job_id"] == first["jobs"]["profile"]["job_id"]
    assert second["jobs"]["compile"]["reused"] and second["jobs"]["profile"]["reused"]
    assert second["profile"] == first["profile"] and second["dlc"] == first["dlc"]
    assert "(both reused)" in result.output


def test_rerun_with_a_lost_dlc_asks_the_hub_but_submits_nothing(fake_hub, out_dir):
    assert _build(out_dir).exit_code == 0
    (out_dir / "rb5-gen2" / "model.dlc").unlink()
    fake_hub.STATE["calls"].clear()
    assert _build(out_dir).exit_code == 0
    names = [c["call"] for c in fake_hub.STATE["calls"]]
    assert not [n for n in names if n.startswith("submit_") or n == "upload_model"]
    assert "get_job" in names and "CompileJob.download_target_model" in names
    assert (out_dir / "rb5-gen2" / "model.dlc").is_file()


def test_failed_compile_job_surfaces_its_message_and_id(fake_hub, out_dir):
    fake_hub.STATE["fail"]["compile"] = "Failed to compile model: op Resize is not supported on GPU\n(see logs)"
    result = _build(out_dir)
    assert result.exit_code == 3  # a tool failed
    job_id = _calls(fake_hub, "CompileJob.wait")[0]["job_id"]
    assert (f"error: AI Hub compile job {job_id} failed: Failed to compile model: op Resize is not supported on GPU "
            f"(see logs) (see https://app.aihub.qualcomm.com/jobs/{job_id}/)") in result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    bundle = out_dir / "rb5-gen2"
    assert not (bundle / "manifest.json").exists()  # not a finished bundle
    ledger = json.loads((bundle / "hub_jobs.json").read_text())["jobs"]
    assert [(j["kind"], j["job_id"], j["status"]) for j in ledger.values()] == [("compile", job_id, "FAILED")]
    # the next run resubmits instead of reusing the failed job
    fake_hub.STATE["fail"].clear()
    assert _build(out_dir).exit_code == 0
    assert len(_calls(fake_hub, "submit_compile_job")) == 2


def test_failed_profile_job(fake_hub, out_dir):
    fake_hub.STATE["fail"]["profile"] = "Device QCS8550 (Proxy) ran out of memory"
    result = _build(out_dir)
    assert result.exit_code == 3 and "AI Hub profile job j" in result.output and "ran out of memory" in result.output


def test_unreachable_hub_falls_back_to_offline_in_one_line(fake_hub, out_dir):
    fake_hub.STATE["unreachable"] = True
    result = _build(out_dir)
    assert result.exit_code == 0, result.output
    note = [line for line in result.output.splitlines() if line.startswith("AI Hub not used")]
    assert note == ["AI Hub not used: the hub did not answer or refused (InternalError: Could not connect to Qualcomm "
                    "AI Hub. Check your network connection). The bundle holds build_qnn.sh (QAIRT steps) and "
                    "submit_hub_jobs.py (AI Hub jobs) to finish the build"]
    record = json.loads((out_dir / "rb5-gen2" / "manifest.json").read_text())["compile"]
    assert record["status"] == "offline" and record["scripts"] == ["build_qnn.sh", "submit_hub_jobs.py"]


def test_missing_token_is_offline_with_the_fix(fake_hub, out_dir, hub_token):
    hub_token.unlink()
    result = _build(out_dir)
    assert result.exit_code == 0
    assert (f"AI Hub not used: no AI Hub API token in {hub_token} (run `qai-hub configure --api_token TOKEN`). "
            "The bundle holds build_qnn.sh") in result.output
    assert fake_hub.STATE["calls"] == []


def test_missing_package_is_offline(no_hub_package, hub_token, out_dir):
    result = _build(out_dir)
    assert result.exit_code == 0
    assert "AI Hub not used: the qai-hub package is not installed (pip install qai-hub)." in result.output


@pytest.mark.parametrize("content,expected", [
    ("[api]\napi_token = abc\n", True),
    ("[api]\napi_token =\n", False),
    ("[other]\napi_token = abc\n", False),
    ("not an ini", False),
])
def test_token_detection_follows_the_client_config(tmp_path, monkeypatch, content, expected):
    from edgedeploy.targets.qnn import hub

    ini = tmp_path / "client.ini"
    ini.write_text(content)
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    assert hub.config_path() == ini
    assert hub.token_configured() is expected
    monkeypatch.delenv("QAIHUB_CLIENT_INI")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert str(hub.config_path()) == str(tmp_path / ".qai_hub" / "client.ini")


def _profiles_with(tmp_path, monkeypatch, old: str, new: str):
    """A copy of the shipped profiles with one edit to rb5-gen2.yaml, used from now on; returns its path."""
    from edgedeploy.core.profiles import profiles_dir

    profiles = tmp_path / "profiles"
    shutil.copytree(profiles_dir(), profiles, dirs_exist_ok=True)
    path = profiles / "rb5-gen2.yaml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    monkeypatch.setenv("EDGEDEPLOY_PROFILES", str(profiles))
    return path


def test_another_qairt_version_never_reuses_the_old_jobs(fake_hub, out_dir, tmp_path, monkeypatch):
    assert _build(out_dir).exit_code == 0
    _profiles_with(tmp_path, monkeypatch, f'qairt_version: "{QAIRT}"', 'qairt_version: "2.26"')
    result = _build(out_dir)
    assert result.exit_code == 0, result.output
    compiles, profiles = _calls(fake_hub, "submit_compile_job"), _calls(fake_hub, "submit_inference_job")
    assert [c["options"] for c in compiles] == [COMPILE_OPTIONS, "--target_runtime qnn_dlc --qairt_version 2.26"]
    assert profiles[-1]["options"].endswith(" --qairt_version 2.26") and len(profiles) == 2
    record = json.loads((out_dir / "rb5-gen2" / "manifest.json").read_text())["compile"]
    assert record["qairt_version"] == "2.26" and not record["jobs"]["compile"]["reused"]
    ledger = json.loads((out_dir / "rb5-gen2" / "hub_jobs.json").read_text())["jobs"]
    assert sorted(job["qairt_version"] for job in ledger.values()) == ["2.25", "2.25", "2.26", "2.26"]


def test_the_qairt_version_is_in_the_job_key_itself(tmp_path):
    from edgedeploy.core.profiles import load_profile
    from edgedeploy.targets.qnn import hub
    from edgedeploy.targets.qnn.settings import HubSettings

    settings = HubSettings.from_profile(load_profile("rb5-gen2"))
    other = dataclasses.replace(settings, qairt_version="2.26")
    spec = {"image": ((1, 3, 224, 224), "float32")}
    keys = {hub.job_key("compile", **hub._compile_facts(s, "sha", spec)) for s in (settings, other)}
    keys |= {hub.job_key("profile", **hub._profile_facts(s, "j1")) for s in (settings, other)}
    assert len(keys) == 4


def test_profile_without_a_qairt_version_is_refused(fake_hub, out_dir, tmp_path, monkeypatch):
    path = _profiles_with(tmp_path, monkeypatch, f'  qairt_version: "{QAIRT}"\n', "")
    result = _build(out_dir)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (f"error: device profile {path}: build section lacks qairt_version "
                                              "(needed for the QNN / AI Hub build)")


def test_manifest_and_readme_say_what_the_proxy_device_is(bundles):
    from edgedeploy.core.profiles import load_profile

    note = load_profile("rb5-gen2").build["hub_device_note"]
    assert "Android proxy" in note and "QCS8550" in note and "not the RB5 Gen2 kit" in note
    manifest = json.loads((bundles.rb5 / "manifest.json").read_text())
    assert manifest["compile"]["hub_device_note"] == note
    assert f"AI Hub's `{DEVICE}` is {note}." in (bundles.rb5 / "README.md").read_text()


def test_the_proxy_wording_comes_from_the_profile(fake_hub, out_dir, tmp_path, monkeypatch):
    _profiles_with(tmp_path, monkeypatch, "not the RB5 Gen2 kit itself", "not the kit (edited)")
    assert _build(out_dir).exit_code == 0
    assert "not the kit (edited)." in (out_dir / "rb5-gen2" / "README.md").read_text()


def test_rb5_proxy_device_is_rejected(fake_hub, out_dir, tmp_path, monkeypatch):
    path = _profiles_with(tmp_path, monkeypatch, 'hub_device: "QCS8550 (Proxy)"', 'hub_device: "RB5 (Proxy)"')
    result = _build(out_dir)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "error: AI Hub device 'RB5 (Proxy)' is the older QCS8250 (RB5), not the RB5 Gen2's QCS8550: set "
        f"build.hub_device to \"QCS8550 (Proxy)\" in {path}")
    assert _calls(fake_hub, "submit_compile_job") == []


def test_keep_fp32_is_refused_for_qnn(fake_hub, out_dir):
    result = _build(out_dir, "--keep-fp32", "/readout/Sqrt")
    assert result.exit_code == 2 and "--keep-fp32 applies to TensorRT targets" in result.output


def _converter_args(script: str) -> list[str]:
    (line,) = [line for line in script.splitlines() if line.startswith("qnn-onnx-converter ")]
    return shlex.split(line)[1:]


def test_converter_keeps_the_nchw_layout_of_every_input_and_output(bundles):
    """QAIRT 2.25 converters.html, "Preserve I/O": `--preserve_io layout` with no names keeps the source layout of
    all inputs and outputs; without it the legacy converter makes 4-D inputs channel-last."""
    args = _converter_args((bundles.rb5 / "build_qnn.sh").read_text())
    assert args[args.index("--preserve_io") + 1] == "layout"
    after = args[args.index("--preserve_io") + 2:]
    assert not after or after[0].startswith("--"), "tensor names after 'layout' would preserve only those"
    assert args[args.index("--float_bitwidth") + 1] == "16" and args[args.index("--input_network") + 1] == "model.onnx"


def _run_build_qnn(bundle, tmp_path, **env):
    """build_qnn.sh up to its first QAIRT tool, with a stand-in SDK (bin/ with a qnn-onnx-converter that records)."""
    sdk = tmp_path / "sdk"
    (sdk / "bin").mkdir(parents=True, exist_ok=True)
    (sdk / "bin" / "envsetup.sh").write_text("")
    tool = sdk / "bin" / "qnn-onnx-converter"
    tool.write_text("#!/usr/bin/env bash\necho converter-ran; exit 7\n")
    tool.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("QNN_TARGET", "QNN_AARCH64_LINUX_OE_GCC_112")}
    return subprocess.run(["bash", str(bundle / "build_qnn.sh")], capture_output=True, text=True,
                          env={**base, "QNN_SDK_ROOT": str(sdk), "PATH": f"{sdk / 'bin'}:{os.environ['PATH']}", **env})


def test_oe_linux_target_without_the_esdk_stops_before_converting(rb5_bundle, tmp_path):
    result = _run_build_qnn(rb5_bundle, tmp_path)
    assert result.returncode == 1 and "converter-ran" not in result.stdout
    assert result.stderr.strip() == (
        "QNN_TARGET aarch64-oe-linux-gcc11.2 needs the Qualcomm Linux eSDK (its cross g++ 11.2): install it and set "
        "QNN_AARCH64_LINUX_OE_GCC_112 to its folder (the one holding sysroots/), or set "
        "QNN_TARGET=aarch64-ubuntu-gcc9.4 for an Ubuntu image")
    assert _run_build_qnn(rb5_bundle, tmp_path, QNN_AARCH64_LINUX_OE_GCC_112=str(tmp_path)).returncode == 1


def test_esdk_check_passes_with_the_esdk_or_another_target(rb5_bundle, tmp_path):
    esdk = tmp_path / "esdk"
    gxx = esdk / "sysroots/x86_64-qtisdk-linux/usr/bin/aarch64-oe-linux/aarch64-oe-linux-g++"
    gxx.parent.mkdir(parents=True)
    gxx.write_text("#!/bin/sh\n")
    gxx.chmod(0o755)
    for env in ({"QNN_AARCH64_LINUX_OE_GCC_112": str(esdk)}, {"QNN_TARGET": "aarch64-ubuntu-gcc9.4"}):
        result = _run_build_qnn(rb5_bundle, tmp_path, **env)
        assert result.returncode == 7 and "converter-ran" in result.stdout, result.stderr


def test_offline_readme_says_what_the_qairt_path_needs(bundles):
    readme = (bundles.rb5 / "README.md").read_text().replace("\n", " ")
    assert "QAIRT/QNN SDK 2.25" in readme and "QNN_AARCH64_LINUX_OE_GCC_112" in readme
    assert "--preserve_io layout" in readme and "Qualcomm Linux eSDK" in readme


def test_offline_files_hold_the_qairt_steps(bundles):
    script = (bundles.rb5 / "build_qnn.sh").read_text()
    assert ("qnn-onnx-converter --input_network model.onnx --output_path qnn/model.cpp --float_bitwidth 16 "
            "--preserve_io layout") in script
    assert "qnn-model-lib-generator -c qnn/model.cpp -b qnn/model.bin" in script
    assert "--backend libQnnGpu.so" in script and '"precision_mode": "fp16"' in script
    assert "context-binary" not in script  # an HTP artifact, not for the GPU
    subprocess.run(["bash", "-n", str(bundles.rb5 / "build_qnn.sh")], check=True)
    result = subprocess.run(["bash", str(bundles.rb5 / "build_qnn.sh")], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "QNN_SDK_ROOT"})
    assert result.returncode != 0 and "set QNN_SDK_ROOT" in result.stderr


def test_hub_script_submits_the_same_jobs(rb5_bundle, tmp_path):
    log = tmp_path / "calls.jsonl"
    env = {**os.environ, "PYTHONPATH": str(fakes.FAKE_MODULES), "FAKE_QAI_HUB_LOG": str(log)}
    result = subprocess.run([sys.executable, "submit_hub_jobs.py"], cwd=rb5_bundle, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    submitted = {c["call"]: c for c in calls if c["call"].startswith("submit_")}
    assert submitted["submit_compile_job"]["options"] == COMPILE_OPTIONS
    assert submitted["submit_compile_job"]["device"] == {"device": DEVICE}
    assert submitted["submit_compile_job"]["input_specs"] == {"image": [[1, 3, 224, 224], "float32"]}
    assert submitted["submit_inference_job"]["options"] == RUN_OPTIONS and submitted["submit_inference_job"]["profile"]
    assert "submit_profile_job (deprecated)" not in {c["call"] for c in calls}
    assert (rb5_bundle / "model.dlc").is_file()
    record = json.loads((rb5_bundle / "hub_profile.json").read_text())
    assert record["latency_ms"] == pytest.approx(140.25) and record["device"] == DEVICE


@pytest.fixture
def compiled_bundle(fake_hub, out_dir):
    assert _build(out_dir).exit_code == 0
    return out_dir / "rb5-gen2"


def _score(model, root, out):
    return CliRunner().invoke(main, ["score", "--model", str(model), "--bench", "mvtec", "--data-root", str(root),
                                     "--out", str(out)])


def test_dlc_scores_through_inference_jobs(compiled_bundle, fake_hub, mvtec_root, tmp_path):
    from edgedeploy.evaluation.data import load_batch, load_benchmark

    fake_hub.STATE["calls"].clear()
    result = _score(compiled_bundle / "model.dlc", mvtec_root, tmp_path / "hub.csv")
    assert result.exit_code == 0, result.output
    (call,) = _calls(fake_hub, "submit_inference_job")
    assert call["options"] == RUN_OPTIONS and call["device"] == {"device": DEVICE}
    assert call["profile"] is False  # scoring pays for no profiling pass
    assert call["inputs"] == {"image": [{"array": [1, 3, 224, 224], "dtype": "float32"}] * 4}
    table = read_scores(tmp_path / "hub.csv")
    bench = load_benchmark("mvtec", mvtec_root)
    expected, _ = fakes.expected_outputs(load_batch([s.path for s in bench.samples], 224))
    np.testing.assert_allclose([r.score for r in table.rows], expected, rtol=1e-5)
    manifest = json.loads((compiled_bundle / "manifest.json").read_text())
    assert table.meta["runner"] == "qai-hub" and table.meta["model_sha256"] == manifest["model"]["sha256"]
    assert table.meta["compile_job"] == manifest["compile"]["jobs"]["compile"]["job_id"]
    assert table.meta["hub_device"] == DEVICE
    # the same images again: the finished inference job is reused
    fake_hub.STATE["calls"].clear()
    assert _score(compiled_bundle / "model.dlc", mvtec_root, tmp_path / "again.csv").exit_code == 0
    assert _calls(fake_hub, "submit_inference_job") == []
    assert read_scores(tmp_path / "again.csv").rows == table.rows


def test_scoring_jobs_are_keyed_by_the_qairt_version(compiled_bundle, fake_hub, mvtec_root, tmp_path):
    assert _score(compiled_bundle / "model.dlc", mvtec_root, tmp_path / "a.csv").exit_code == 0
    manifest_path = compiled_bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["compile"]["qairt_version"] = "2.26"
    manifest_path.write_text(json.dumps(manifest))
    fake_hub.STATE["calls"].clear()
    assert _score(compiled_bundle / "model.dlc", mvtec_root, tmp_path / "b.csv").exit_code == 0
    assert len(_calls(fake_hub, "submit_inference_job")) == 1  # the same images, another QAIRT: not reused


def test_dlc_outputs_found_by_size_when_renamed(compiled_bundle, fake_hub, mvtec_root, tmp_path):
    fake_hub.STATE["output_names"] = ("output_0", "output_1")
    assert _score(compiled_bundle / "model.dlc", mvtec_root, tmp_path / "hub.csv").exit_code == 0
    assert len(read_scores(tmp_path / "hub.csv").rows) == 4


def test_failed_inference_job(compiled_bundle, fake_hub, mvtec_root, tmp_path):
    fake_hub.STATE["fail"]["inference"] = "Inference failed on device"
    result = _score(compiled_bundle / "model.dlc", mvtec_root, tmp_path / "hub.csv")
    assert result.exit_code == 3 and "AI Hub inference job j" in result.output and "Inference failed on device" in result.output


def test_dlc_scoring_needs_the_hub(compiled_bundle, no_hub_package, mvtec_root, tmp_path):
    result = _score(compiled_bundle / "model.dlc", mvtec_root, tmp_path / "hub.csv")
    assert result.exit_code == 2
    assert result.output == "error: cannot score on AI Hub: the qai-hub package is not installed (pip install qai-hub)\n"


def test_dlc_without_compile_record(rb5_bundle, mvtec_root, tmp_path):
    (rb5_bundle / "model.dlc").write_bytes(b"dlc")
    result = _score(rb5_bundle / "model.dlc", mvtec_root, tmp_path / "hub.csv")
    assert result.exit_code == 2 and "records no AI Hub compile job" in result.output


def test_recorded_job_the_hub_no_longer_knows_is_resubmitted(fake_hub, out_dir):
    assert _build(out_dir).exit_code == 0
    (out_dir / "rb5-gen2" / "model.dlc").unlink()
    fake_hub.STATE["jobs"].clear()  # e.g. a token of another account: get_job answers "not found"
    result = _build(out_dir)
    assert result.exit_code == 0, result.output
    assert len(_calls(fake_hub, "submit_compile_job")) == 2 and len(_calls(fake_hub, "submit_inference_job")) == 2
    assert json.loads((out_dir / "rb5-gen2" / "manifest.json").read_text())["compile"]["status"] == "compiled"


def test_hub_script_survives_an_empty_profile(rb5_bundle, tmp_path):
    """qai-hub 0.56: download_profile() can return {}; the generated script must not die on a KeyError."""
    env = {**os.environ, "PYTHONPATH": str(fakes.FAKE_MODULES), "FAKE_QAI_HUB_LOG": str(tmp_path / "calls.jsonl"),
           "FAKE_QAI_HUB_EMPTY_PROFILE": "1"}
    result = subprocess.run([sys.executable, "submit_hub_jobs.py"], cwd=rb5_bundle, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "returned no execution summary" in result.stdout
    record = json.loads((rb5_bundle / "hub_profile.json").read_text())
    assert record["latency_ms"] is None and record["peak_memory_mib"] is None


def test_hub_build_survives_an_empty_profile(fake_hub, out_dir, monkeypatch):
    monkeypatch.setenv("FAKE_QAI_HUB_EMPTY_PROFILE", "1")
    result = _build(out_dir)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out_dir / "rb5-gen2" / "manifest.json").read_text())
    assert manifest["compile"]["profile"]["latency_ms"] is None


@pytest.mark.parametrize("error", [TypeError("submit_compile_job() got an unexpected keyword argument 'options'"),
                                   AttributeError("module 'qai_hub' has no attribute 'Device'")])
def test_a_client_api_change_is_a_bug_not_an_offline_fallback(fake_hub, out_dir, monkeypatch, error):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(fake_hub, "submit_compile_job", broken)
    result = _build(out_dir)
    assert result.exit_code == 3, result.output
    assert f"qai-hub {fake_hub.__version__} rejected" in result.output and type(error).__name__ in result.output
    assert "written against qai-hub 0.56" in result.output
    assert "offline" not in result.output.lower() and not (out_dir / "rb5-gen2" / "manifest.json").exists()
