"""The TensorRT runner keeps the runner contract, and an engine loads only in the exact TensorRT that built it.

TensorRT refuses a plan from any other version (major.minor.patch.build) unless it was built version-compatible;
``engine_check`` says so before TensorRT does, and the fake TensorRT refuses the same plans.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fakes
from edgedeploy.cli import main
from edgedeploy.core.hashing import sha256_file
from edgedeploy.runtime.cache import ScoreCache
from edgedeploy.runtime.engine_check import EngineIncompatibleError, check_engine
from edgedeploy.runtime.engine_metadata import sidecar_path

GPU = {"compute_capability": "8.7", "name": "Orin (nvgpu)"}
KEEP = "/stages.1/blocks/blocks.0/attn/Softmax"


def _engine_build(bundle: Path, *extra: str) -> Path:
    result = CliRunner().invoke(main, ["engine", "build", str(bundle), *extra])
    assert result.exit_code == 0, result.output
    return bundle / "model.engine"


@pytest.fixture
def engine(fake_trt, jetson_bundle) -> Path:
    return _engine_build(jetson_bundle)


def _score(model, root, out):
    return CliRunner().invoke(main, ["score", "--model", str(model), "--bench", "mvtec", "--data-root", str(root),
                                     "--out", str(out)])


def _images(n: int = 3, size: int = 224) -> np.ndarray:
    return np.random.default_rng(1).random((n, 3, size, size), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- the runner contract


def test_making_the_runner_loads_nothing(engine, fake_trt):
    from edgedeploy.runtime.tensorrt import TensorRTRunner

    runner = TensorRTRunner(engine)
    assert not runner.is_active and fake_trt.LOG["deserialized"] == 0 and not fake_trt.memories


def test_a_missing_engine_is_refused_when_made(fake_trt, tmp_path):
    from edgedeploy.runtime.base import ModelFileError
    from edgedeploy.runtime.tensorrt import TensorRTRunner

    with pytest.raises(ModelFileError, match="does not exist"):
        TensorRTRunner(tmp_path / "none.engine")


def test_activate_deactivate_activate_scores_the_same(engine, fake_trt):
    from edgedeploy.runtime.tensorrt import TensorRTRunner

    images = _images()
    runner = TensorRTRunner(engine)
    runner.activate()
    assert runner.is_active and fake_trt.LOG["deserialized"] == 1
    first = runner.infer(images)
    runner.deactivate()
    memory = fake_trt.memories[-1]
    assert not runner.is_active and memory.closed and len(memory.freed) == 3  # input + two outputs
    runner.activate()
    assert runner.is_active and fake_trt.LOG["deserialized"] == 2 and len(fake_trt.memories) == 2
    second = runner.infer(images)
    runner.deactivate()
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_allclose(first[0], fakes.expected_outputs(images)[0], rtol=1e-5)
    assert fake_trt.memories[-1].closed


def test_infer_activates_and_a_context_manager_releases(engine, fake_trt):
    from edgedeploy.runtime.tensorrt import TensorRTRunner

    runner = TensorRTRunner(engine)
    scores, _ = runner.infer(_images(1))
    assert runner.is_active and len(scores) == 1
    runner.deactivate()
    with runner:
        assert runner.is_active
    assert not runner.is_active and all(m.closed for m in fake_trt.memories)


def test_identity_names_the_engine_file_and_the_card(engine, fake_trt, bundles, tmp_path):
    from edgedeploy.core.modelcard import card_digest
    from edgedeploy.runtime.tensorrt import TensorRTRunner

    other_bundle = Path(shutil.copytree(bundles.jetson, tmp_path / "other" / "jetson-orin-nano"))
    other = _engine_build(other_bundle, "--keep-fp32", KEEP)
    assert sha256_file(other) != sha256_file(engine)
    a, b = TensorRTRunner(engine), TensorRTRunner(other)
    identity_a, identity_b = a.identity(), b.identity()
    assert identity_a["engine"] == sha256_file(engine) and identity_b["engine"] == sha256_file(other)
    assert identity_a["card"] == card_digest(a.card)
    assert identity_a != identity_b
    assert ScoreCache(identity_a, tmp_path).key != ScoreCache(identity_b, tmp_path).key


def test_identity_is_stable_for_the_same_file(engine, fake_trt):
    from edgedeploy.runtime.tensorrt import TensorRTRunner

    first = TensorRTRunner(engine)
    identity = first.identity()
    first.deactivate()
    assert first.identity() == identity  # deactivated: the same, nothing reloaded for it
    assert TensorRTRunner(engine).identity() == identity
    json.dumps(identity)  # a cache key is JSON


# ---------------------------------------------------------------------------------------------- the exact version


def test_engine_from_another_patch_release_is_refused(engine, fake_trt, mvtec_root, tmp_path):
    """10.3.0 vs 10.3.1: the same major.minor, still another TensorRT. One line, both versions, the fix."""
    fake_trt.reset("10.3.1")
    result = _score(engine, mvtec_root, tmp_path / "s.csv")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "was built with TensorRT 10.3.0.30 but this is TensorRT 10.3.1" in result.output
    assert "edgedeploy engine build" in result.output and "exact TensorRT version" in result.output
    assert fake_trt.LOG["deserialized"] == 0 and not (tmp_path / "s.csv").exists()


def test_engine_from_another_build_number_is_refused(engine, fake_trt):
    with pytest.raises(EngineIncompatibleError, match="built with TensorRT 10.3.0.30 but this is TensorRT 10.3.0.26"):
        check_engine(engine, "10.3.0.26", GPU)


def test_engine_from_the_same_exact_version_is_accepted(engine, fake_trt, mvtec_root, tmp_path):
    assert check_engine(engine, "10.3.0.30", GPU)["tensorrt_version"] == "10.3.0.30"
    result = _score(engine, mvtec_root, tmp_path / "s.csv")
    assert result.exit_code == 0, result.output


def test_without_sidecar_the_plan_header_gives_the_full_version(fake_trt, tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(fakes.fake_plan())  # header 10.3.0.30, no sidecar
    assert check_engine(engine, "10.3.0.30", GPU) == {}
    with pytest.raises(EngineIncompatibleError, match=r"10\.3\.0\.30 but this is TensorRT 10\.3\.1\.4"):
        check_engine(engine, "10.3.1.4", GPU)


def test_a_sidecar_version_without_build_number_takes_the_headers():
    from edgedeploy.runtime.engine_check import same_version

    assert same_version("10.3.0", "10.3.0.30") and same_version("10.3.0.30", "10.3.0.30")
    assert not same_version("10.3.0", "10.3.1.2") and not same_version("10.3", "10.3.0.30")
    assert not same_version("10.3.0.30", "10.3.0.26") and not same_version(None, "10.3.0.30")


def _rewrite_sidecar(engine: Path, **fields) -> None:
    path = Path(sidecar_path(str(engine)))
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("runtime, loads", [("10.3.0.30", True), ("10.3.1", True), ("10.8.0.43", True),
                                            ("10.2.0.19", False), ("9.3.0.1", False)])
def test_a_version_compatible_engine_loads_in_the_same_or_a_later_10x(engine, fake_trt, runtime, loads):
    _rewrite_sidecar(engine, version_compatible=True)
    if loads:
        assert check_engine(engine, runtime, GPU)["version_compatible"] is True
    else:
        with pytest.raises(EngineIncompatibleError, match="same or a later TensorRT"):
            check_engine(engine, runtime, GPU)


def test_version_compatible_without_its_lean_runtime_needs_the_exact_version(engine, fake_trt):
    _rewrite_sidecar(engine, settings={"version_compatible": True, "exclude_lean_runtime": True})
    assert check_engine(engine, "10.3.0.30", GPU)
    with pytest.raises(EngineIncompatibleError, match="lean runtime"):
        check_engine(engine, "10.3.1", GPU)


def test_a_version_compatible_engine_runs_in_a_later_tensorrt(fake_trt, jetson_bundle, mvtec_root, tmp_path):
    """Built with BuilderFlag.VERSION_COMPATIBLE (sidecar says so), scored with 10.4: the runner lets TensorRT run
    the plan's lean runtime, and the scores are the device's."""
    engine = _engine_build(jetson_bundle)
    builder = fake_trt.Builder(fake_trt.Logger())
    network = fake_trt.LOG["built"][-1]["network"]
    config = builder.create_builder_config()
    config.set_flag(fake_trt.BuilderFlag.FP16)
    config.set_flag(fake_trt.BuilderFlag.VERSION_COMPATIBLE)
    engine.write_bytes(bytes(builder.build_serialized_network(network, config)))
    _rewrite_sidecar(engine, engine_sha256=sha256_file(engine), version_compatible=True)
    fake_trt.reset("10.4.0.26")
    result = _score(engine, mvtec_root, tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert fake_trt.LOG["deserialized"] == 1 and fake_trt.LOG["executions"] == 4


# ---------------------------------------------------------------------------------------------- the fake follows it


def test_the_fake_runtime_refuses_any_other_exact_version(fake_trt):
    plan = fakes.fake_plan(b'{"inputs": [], "outputs": []}', (10, 3, 0, 30))
    assert fake_trt.Runtime(None).deserialize_cuda_engine(plan) is not None
    for version in ("10.3.1", "10.3.0.26", "10.4.0.26"):
        fake_trt.reset(version)
        assert fake_trt.Runtime(None).deserialize_cuda_engine(plan) is None, version


def test_the_fake_runtime_loads_a_version_compatible_plan_only_trusted_and_forward(fake_trt):
    plan = fakes.fake_plan(b'{"inputs": [], "outputs": [], "version_compatible": true, "lean_runtime": true}')
    fake_trt.reset("10.4.0.26")
    runtime = fake_trt.Runtime(None)
    assert runtime.deserialize_cuda_engine(plan) is None  # host code not allowed
    runtime.engine_host_code_allowed = True
    assert runtime.deserialize_cuda_engine(plan) is not None
    fake_trt.reset("10.2.0.19")
    older = fake_trt.Runtime(None)
    older.engine_host_code_allowed = True
    assert older.deserialize_cuda_engine(plan) is None
