"""The fakes keep the real packages' signatures: every call edgedeploy makes, checked where the real package imports.

qai-hub installs with the [dev] extra (pinned to the version the code was written against); polygraphy always.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fakes  # noqa: E402

HUB_FUNCTIONS = ("upload_model", "submit_compile_job", "submit_inference_job", "submit_profile_job", "get_job")
HUB_JOB_METHODS = {"CompileJob": ("wait", "get_status", "get_target_model", "download_target_model"),
                   "InferenceJob": ("wait", "get_status", "download_profile", "download_output_data")}


def _shape(fn) -> list[tuple[str, str, bool]]:
    """(name, kind, has a default) of each parameter: what a caller's keywords and positions depend on."""
    return [(p.name, p.kind.name, p.default is not inspect.Parameter.empty)
            for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", HUB_FUNCTIONS)
def test_fake_hub_functions_match_the_real_client(name):
    real = pytest.importorskip("qai_hub")
    fake = fakes.load_fake("qai_hub")
    assert _shape(getattr(fake, name)) == _shape(getattr(real, name)), name


@pytest.mark.parametrize("cls, method", [(c, m) for c, ms in HUB_JOB_METHODS.items() for m in ms])
def test_fake_hub_job_methods_match_the_real_client(cls, method):
    real = pytest.importorskip("qai_hub")
    fake = fakes.load_fake("qai_hub")
    assert _shape(getattr(getattr(fake, cls), method)) == _shape(getattr(getattr(real, cls), method))


def test_the_check_fails_on_a_renamed_parameter():
    def real(model, device, inputs=None):
        pass

    def renamed(model, device, data=None):
        pass

    assert _shape(real) != _shape(renamed)


def test_polygraphy_cuda_wrapper_has_what_the_tensorrt_runner_calls():
    """``runtime/tensorrt.py``'s CudaMemory (faked in tests by ``fakes.FakeCudaMemory``) calls these."""
    from polygraphy import cuda

    assert _shape(cuda.Cuda.malloc) == [("self", "POSITIONAL_OR_KEYWORD", False), ("nbytes", "POSITIONAL_OR_KEYWORD", False)]
    assert [p[0] for p in _shape(cuda.Cuda.memcpy)] == ["self", "dst", "src", "nbytes", "kind", "stream_ptr"]
    assert [p[0] for p in _shape(cuda.Cuda.free)] == ["self", "ptr"]
    assert callable(cuda.wrapper) and _shape(cuda.wrapper) == []
    assert _shape(cuda.Stream.__init__) == _shape(cuda.Stream.synchronize) == _shape(cuda.Stream.free)
    assert "self.ptr" in inspect.getsource(cuda.Stream.__init__)
    assert {"HostToDevice", "DeviceToHost"} <= set(vars(cuda.MemcpyKind))
