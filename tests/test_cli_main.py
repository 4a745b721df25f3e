import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from edgedeploy.cli import main

SMALL = "edgezsad-tinyvit5m-224"


def _run(*args):
    return CliRunner().invoke(main, list(args))


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_does_not_import_torch():
    code = "import sys; from edgedeploy.cli import main; import click; " \
           "sys.argv=['edgedeploy','--help']\ntry:\n main()\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def test_targets_lists_profiles():
    result = _run("targets")
    assert result.exit_code == 0
    assert "jetson-orin-nano" in result.output and "rb5-gen2" in result.output and "tensorrt 10.3" in result.output


@pytest.mark.parametrize("args, needles", [
    (["build", "--target", "xavier"], ["unknown target 'xavier'", "rb5-gen2"]),
    (["build", "--target", "rb5-gen2", "--recipe", "nope"], ["unknown recipe 'nope'", SMALL]),
    (["build", "--target", "rb5-gen2", "--checkpoint", "missing.pt"], ["missing.pt does not exist"]),
    (["audit", "nothing.onnx", "--target", "rb5-gen2"], ["nothing.onnx does not exist"]),
])
def test_bad_input_is_one_line(args, needles):
    _one_line_error(_run(*args), *needles)


def test_truncated_and_foreign_checkpoints(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    _one_line_error(_run("build", "--target", "rb5-gen2", "--recipe", SMALL, "--checkpoint", str(text),
                         "--out", str(tmp_path / "out")), "cannot be read")
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    _one_line_error(_run("build", "--target", "rb5-gen2", "--recipe", SMALL, "--checkpoint", str(other),
                         "--out", str(tmp_path / "out")), "does not fit recipe", "conv1.weight")
    assert not (tmp_path / "out" / "rb5-gen2" / "model.onnx").exists()


def test_malformed_profile_and_unparsable_onnx(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text("schema_version: 1\nname: bad\n")
    _one_line_error(_run("audit", "x.onnx", "--target", str(profile)), "bad.yaml", "missing field")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage" * 20)
    _one_line_error(_run("audit", str(junk), "--target", "rb5-gen2"), "junk.onnx")


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    _one_line_error(_run("build", "--target", "rb5-gen2", "--recipe", SMALL, "--out", str(blocker / "out")),
                    "not writable", "--out")


def test_audit_command_exit_codes(tmp_path, small_build):
    model = small_build.bundle_dir / "model.onnx"
    ok = _run("audit", str(model), "--target", "rb5-gen2", "--json", str(tmp_path / "a.json"))
    assert ok.exit_code == 0 and "audit PASS" in ok.output and (tmp_path / "a.json").exists()


def test_audit_command_fails_on_rank6(tmp_path):
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4, 5, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 3, 5, 6])
    node = helper.make_node("Transpose", ["x"], ["y"], name="win_transpose", perm=[0, 1, 3, 2, 4, 5])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    save(model, str(tmp_path / "rank6.onnx"))
    result = _run("audit", str(tmp_path / "rank6.onnx"), "--target", "rb5-gen2")
    assert result.exit_code == 1 and "win_transpose" in result.output and "rank 6" in result.output


def test_missing_extra_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    from edgedeploy.cli import main
    from edgedeploy.core.extras import missing_extra_line

    assert "pip install 'edgedeploy[host]'" in missing_extra_line("torch.nn")
    assert "pip install 'edgedeploy[jetson]'" in missing_extra_line("polygraphy")
    assert missing_extra_line("yaml") is None  # a core dependency: not an extra's
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    result = CliRunner().invoke(main, ["build", "--target", "rb5-gen2"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("error: edgedeploy build needs timm") and "edgedeploy[host]" in result.output


def test_exit_codes_tool_failure_and_internal_error(monkeypatch, tmp_path):
    from edgedeploy.core.errors import ToolFailedError
    from edgedeploy.host import audit as audit_module

    def tool_fails(*a, **k):
        raise ToolFailedError("TensorRT failed to build the engine")

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    monkeypatch.setattr(audit_module, "audit_onnx", tool_fails)
    result = CliRunner().invoke(main, ["audit", str(model), "--target", "rb5-gen2"])
    assert result.exit_code == 3 and result.output == "error: TensorRT failed to build the engine\n"

    def bug(*a, **k):
        raise KeyError("oops")

    monkeypatch.setattr(audit_module, "audit_onnx", bug)
    result = CliRunner().invoke(main, ["audit", str(model), "--target", "rb5-gen2"])
    assert result.exit_code == 4 and result.output.count("\n") == 1
    assert result.output.startswith("internal error: KeyError: 'oops'") and "--debug" in result.output
    result = CliRunner().invoke(main, ["--debug", "audit", str(model), "--target", "rb5-gen2"])
    assert isinstance(result.exception, KeyError)  # --debug lets the traceback through


@pytest.mark.parametrize("args, option", [
    (["audit", "MODEL", "--target", "rb5-gen2", "--json", "/proc/x/a.json"], "--json"),
    (["fidelity", "--bench", "demo", "--target", "rb5-gen2", "--report", "/proc/x"], "--report"),
    (["build", "--target", "rb5-gen2", "--out", "/proc/x"], "--out"),
])
def test_unwritable_outputs_are_one_line_before_any_work(tmp_path, args, option):
    import time

    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read")
    start = time.perf_counter()
    result = CliRunner().invoke(main, [str(model) if a == "MODEL" else a for a in args])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "not writable" in result.output and option in result.output and time.perf_counter() - start < 1
