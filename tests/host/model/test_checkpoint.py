import pytest
import torch
from safetensors.torch import save_file

from edgedeploy.core.errors import CheckpointError
from edgedeploy.host.model import build_model, load_checkpoint_state


@pytest.fixture(scope="module")
def small_state(small_recipe):
    return build_model(small_recipe).model.state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module-prefix"])
def test_checkpoint_forms_load(tmp_path, small_recipe, small_state, wrap):
    state = {k: v.clone() + 1 for k, v in small_state.items()} if wrap == "plain" else small_state
    obj = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
           "model": {"model": state}, "module-prefix": {f"module.{k}": v for k, v in state.items()}}[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded = build_model(small_recipe, path)
    assert loaded.sha256 and not loaded.seeded
    key = next(iter(state))
    assert torch.equal(loaded.model.state_dict()[key], state[key])
    if wrap == "state_dict":
        assert loaded.metadata == {"epoch": 3}


def test_safetensors(tmp_path, small_recipe, small_state):
    path = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in small_state.items()}, str(path))
    assert build_model(small_recipe, path).sha256


def test_seeded_default_is_reproducible(small_recipe):
    a, b = build_model(small_recipe), build_model(small_recipe)
    assert a.seeded
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_other_architecture_lists_keys(tmp_path, small_recipe, small_state):
    state = {k: v for k, v in small_state.items() if not k.startswith("readout.")}
    state["head.fc.weight"] = torch.zeros(3)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(first: readout\..*unexpected keys \(first: head.fc.weight"):
        build_model(small_recipe, path)


def test_other_size_names_shapes(tmp_path, small_recipe, small_state):
    state = dict(small_state)
    state["readout.prototypes"] = torch.zeros(2, 7)
    path = tmp_path / "resized.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="readout.prototypes"):
        build_model(small_recipe, path)


@pytest.mark.parametrize("content, name, message", [
    (None, "missing.pt", "does not exist"),
    (b"", "empty.pt", "cannot be read"),
    (b"not a checkpoint at all", "text.pt", "cannot be read"),
    (b"\x00" * 64, "junk.safetensors", "not a readable safetensors"),
    (b"x", "weights.ckpt", "expected one of"),
])
def test_bad_files(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint_state(path)


def test_truncated_checkpoint(tmp_path, small_state):
    path = tmp_path / "full.pt"
    torch.save(small_state, path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint_state(truncated)


def test_non_state_dict_object(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint_state(path)
