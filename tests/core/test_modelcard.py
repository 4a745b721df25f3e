"""The model card: how every runner feeds a graph and reads its score and map (edgedeploy/core/modelcard.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgedeploy.core.modelcard import (IMAGENET_MEAN, IMAGENET_STD, CardError, ModelCard, card_for_graph,
                                       card_from_dict, card_from_manifest, card_digest, load_card)

ANOMALIB_OUT = [("pred_score", ["b", 1]), ("pred_label", ["b", 1]), ("anomaly_map", ["b", 1, 64, 64]),
                ("pred_mask", ["b", 1, 64, 64])]


def test_prepare_scales_and_normalises_outside_the_graph():
    images = np.full((2, 3, 4, 4), 0.5, np.float32)
    assert np.array_equal(ModelCard("x", 4, "s", "m").prepare(images), images)
    card = ModelCard("x", 4, "s", "m", value_range="0-255", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    expected = (0.5 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)  # scale-free: both sides x255
    np.testing.assert_allclose(card.prepare(images)[0, :, 0, 0], expected, rtol=1e-6)
    assert ModelCard("x", 4, "s", "m", value_range="0-255").prepare(images).max() == pytest.approx(127.5)
    with pytest.raises(CardError, match="load them at the card's size"):
        card.prepare(np.zeros((1, 3, 8, 8), np.float32))


def test_read_outputs_by_name_and_polarity():
    named = {"m": np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2), "s": np.array([[1.0], [2.0]]), "extra": np.zeros(1)}
    scores, maps = ModelCard("x", 4, "s", "m").read_outputs(named, 2)
    assert scores.tolist() == [1.0, 2.0] and maps.shape == (2, 2, 2)
    scores, maps = ModelCard("x", 4, "s", "m", polarity="lower").read_outputs(named, 2)
    assert scores.tolist() == [-1.0, -2.0] and maps[1, 1, 1] == -7
    with pytest.raises(CardError, match="no output 'score'"):
        ModelCard("x", 4, "score", "m").read_outputs(named, 2)


def test_anomalib_is_detected_and_its_assumptions_listed():
    card = card_for_graph([("input", ["b", 3, "h", "w"])], ANOMALIB_OUT)
    assert (card.input_name, card.input_size, card.score_output, card.map_output) == ("input", 256, "pred_score", "anomaly_map")
    assert card.ignored_outputs == ("pred_label", "pred_mask") and card.map_size == (64, 64)
    assert card.mean is None and card.smooth_sigma == 0.0 and card.source == "anomalib export (detected)"
    assert any("input size 256" in a for a in card.assumptions) and any("normalisation" in a for a in card.assumptions)
    given = card_for_graph([("input", ["b", 3, "h", "w"])], ANOMALIB_OUT, {"input": {"size": 128}})
    assert given.input_size == 128 and not any("input size" in a for a in given.assumptions)


def test_a_card_round_trips_through_the_manifest():
    card = ModelCard("pixels", 96, "verdict", "heat", value_range="0-255", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     polarity="lower", map_size=(24, 24), smooth_sigma=2.0, source="card c.yaml")
    again = card_from_manifest({"model": {"card": card.to_dict()}}, "m.json")
    assert again == card and card_digest(again) == card_digest(card)
    assert card_digest(card) != card_digest(ModelCard("pixels", 96, "verdict", "heat", map_size=(24, 24)))


def test_a_bundle_without_a_card_is_read_as_edgezsad():
    legacy = {"model": {"input": {"name": "image", "shape": [1, 3, 224, 224]}, "outputs": ["score", "anomaly_map"],
                        "postprocess": {"smooth_sigma": 4.0}}}
    card = card_from_manifest(legacy, "m.json")
    assert (card.input_name, card.input_size, card.output_names, card.smooth_sigma) == ("image", 224, ("score", "anomaly_map"), 4.0)


@pytest.mark.parametrize("text, message", [
    ("input: {size: large}\n", "field input.size must be int, got 'large'"),
    ("input: {range: 0-65535}\n", "field input.range must be one of 0-1, 0-255"),
    ("input: {normalisation: {mean: [0, 0], std: [1, 1, 1]}}\n", "input.normalisation.mean must be a list of 3 numbers"),
    ("outputs: {polarity: up}\n", "outputs.polarity must be higher or lower"),
    ("outputs: {scores: s}\n", "unknown field outputs.scores"),
    ("input: {layout: NHWC}\n", "only NCHW graphs are supported"),
    ("- a\n- b\n", "the top level must be a mapping"),
])
def test_bad_card_fields_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "card.yaml"
    path.write_text(text)
    with pytest.raises(CardError, match=rf"card {path}.*{message}".replace("[", r"\[").replace("(", r"\(")):
        load_card(path)


def test_graph_facts_contradicting_the_card_are_refused():
    with pytest.raises(CardError, match="the card says input.size 128 but"):
        card_for_graph([("image", [1, 3, 224, 224])], [("score", [1]), ("anomaly_map", [1, 1, 14, 14])],
                       {"input": {"size": 128}})
    with pytest.raises(CardError, match="the card names input 'x'"):
        card_for_graph([("image", [1, 3, 224, 224])], [("score", [1]), ("anomaly_map", [1, 1, 14, 14])],
                       {"input": {"name": "x"}})
    with pytest.raises(CardError, match="dynamic spatial size"):
        card_for_graph([("image", [1, 3, "h", "w"])], [("score", [1]), ("anomaly_map", [1, 1, "a", "b"])])
    with pytest.raises(CardError, match="only square inputs"):
        card_for_graph([("image", [1, 3, 224, 160])], [("score", [1]), ("anomaly_map", [1, 1, 14, 10])])


def test_edgezsad_recipe_card(small_recipe):
    card = small_recipe.card
    assert card.output_names == ("score", "anomaly_map") and card.map_size == (14, 14) and card.smooth_sigma == 4.0
    assert card.mean is None and card.value_range == "0-1"
