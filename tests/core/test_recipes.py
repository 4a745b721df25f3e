import pytest
import yaml

from edgedeploy.core.errors import RecipeError
from edgedeploy.core.model_recipes import DEFAULT_RECIPE, list_recipes, load_recipe, recipes_dir


def test_default_and_small_recipes():
    assert DEFAULT_RECIPE in list_recipes()
    full = load_recipe()
    assert full.model.backbone == "tiny_vit_21m_512" and full.model.input_size == 512 and full.opset >= 17
    assert full.output_names == ("score", "anomaly_map")
    assert load_recipe("edgezsad-tinyvit5m-224").model.input_size == 224


def test_unknown_recipe_lists_known():
    with pytest.raises(RecipeError, match=f"known recipes are .*{DEFAULT_RECIPE}"):
        load_recipe("edgezsad-vit-huge")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["export"].update(opset=13), "below 17"),
    (lambda d: d["model"].update(fusion_alpha=1.5), "fusion_alpha"),
    (lambda d: d["model"].pop("top_k"), "missing field model.top_k"),
    (lambda d: d["model"].update(topk=3), "unknown field model.topk"),
])
def test_malformed_recipe(tmp_path, edit, message):
    data = yaml.safe_load((recipes_dir() / f"{DEFAULT_RECIPE}.yaml").read_text())
    edit(data)
    path = tmp_path / f"{DEFAULT_RECIPE}.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)
