"""The model card: what a graph expects as input and where its image score and anomaly map come out.

Every runner (host ONNX Runtime, the FP16 emulation, TensorRT, AI Hub) feeds images and reads outputs
through one card, so host and device share one pre- and post-processing path:

* images arrive from ``edgedeploy.evaluation.data.load_image`` as float32 (N, 3, S, S) RGB in [0, 1]
  (resized with the project's one bilinear resize, the card's ``resize: bilinear``);
  :meth:`ModelCard.prepare` scales them to the card's value range (``[0, 255]`` multiplies by 255) and
  applies mean/std when the card says normalisation happens outside the graph;
* :meth:`ModelCard.read_outputs` picks the score and map outputs by name and flips their sign when the
  card says lower values are more anomalous, so every later step can assume "higher = more anomalous".

A card comes from a YAML file (``--card``), from a bundle's manifest, from a recipe (EdgeZSAD), or is
detected from the graph's input and output names (:func:`card_for_graph`, which knows anomalib's export).
This module needs numpy only: it runs on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.core.hashing import sha256_json

CARD_VERSION = 1
RANGES = {"0-1": (0.0, 1.0), "0-255": (0.0, 255.0)}
RESIZE_POLICIES = ("bilinear",)  # the project's one resize (edgedeploy.evaluation.data.preprocess)
POLARITIES = ("higher", "lower")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# anomalib's exported ONNX (anomalib 2.7 export_mixin: the InferenceBatch fields): pred_score and anomaly_map are
# read; pred_label and pred_mask, thresholded copies of them, are dropped from the device graph like any unread output
ANOMALIB_SCORE, ANOMALIB_MAP = "pred_score", "anomaly_map"
ANOMALIB_DEFAULT_SIZE = 256
EDGEZSAD_OUTPUTS = ("score", "anomaly_map")

# What a card that does not say is taken to mean, by the graph's style, each said as an assumption (EdgeZSAD's
# recipe cards say everything). Field -> (value, why).
ASSUMED = {
    "anomalib": {"range": ("0-1", "anomalib feeds float images in [0, 1]"),
                 "normalisation": ("inside", "anomalib exports its pre-processor (normalisation) inside the graph"),
                 "polarity": ("higher", "anomalib's scores and maps grow with anomaly"),
                 "smooth_sigma": (0.0, "anomalib blurs its map inside the graph")},
    "other": {"range": ("0-1", "the card does not say"), "normalisation": ("inside", "the card does not say"),
              "polarity": ("higher", "the card does not say")},
}

Shape = Sequence[Any]  # ints for static dims, str/None for dynamic ones (as onnx and onnxruntime report them)


class CardError(EdgeDeployError):
    """A model card is malformed, contradicts its graph, or cannot be inferred from the graph."""


@dataclass(frozen=True)
class ModelCard:
    input_name: str
    input_size: int                                 # square S x S, NCHW, 3 channels RGB
    score_output: str
    map_output: str
    value_range: str = "0-1"                        # "0-1" or "0-255": what the graph expects
    mean: tuple[float, float, float] | None = None  # set: normalisation outside the graph, applied by prepare
    std: tuple[float, float, float] | None = None
    resize: str = "bilinear"
    polarity: str = "higher"                        # of the score and the map: higher = more anomalous
    map_size: tuple[int, int] | None = None         # the map's (h, w) as the graph outputs it
    smooth_sigma: float = 0.0                       # host-side Gaussian after upsampling the map (pixels)
    ignored_outputs: tuple[str, ...] = ()
    source: str = "card"
    assumptions: tuple[str, ...] = field(default=(), compare=False)

    @property
    def normalisation(self) -> str:
        return "inside the graph" if self.mean is None else "outside the graph (mean/std applied before it)"

    @property
    def output_names(self) -> tuple[str, str]:
        return (self.score_output, self.map_output)

    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.input_size, self.input_size)

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 3, S, S) in [0, 1] -> the graph's input (value range, outside normalisation)."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (self.input_size, self.input_size):
            raise CardError(f"images of shape {tuple(x.shape)} for a card of input {self.input_size}x{self.input_size}: "
                            "load them at the card's size")
        if self.value_range == "0-255":
            x = x * np.float32(255.0)
        if self.mean is not None:
            mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
            scale = np.float32(255.0) if self.value_range == "0-255" else np.float32(1.0)
            x = (x - mean * scale) / (std * scale)
        return np.ascontiguousarray(x, dtype=np.float32)

    def read_outputs(self, named: Mapping[str, np.ndarray], count: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float64 (N,), maps float32 (N, h, w)) from the graph's named outputs; higher = more anomalous."""
        self._require_outputs(list(named), "the model")
        score = np.asarray(named[self.score_output], dtype=np.float64).reshape(-1)
        amap = np.asarray(named[self.map_output], dtype=np.float32)
        if score.size != count or amap.size % max(count, 1) or amap.ndim < 2:
            raise CardError(f"outputs {self.score_output} {tuple(np.shape(named[self.score_output]))} and "
                            f"{self.map_output} {tuple(amap.shape)} for {count} images: expected one score and one map "
                            "per image")
        maps = amap.reshape(count, amap.shape[-2], amap.shape[-1])
        if self.polarity == "lower":
            return -score, -maps
        return score, maps

    def check_io(self, inputs: Sequence[tuple[str, Shape]], outputs: Sequence[tuple[str, Shape]], where: str) -> None:
        """Refuse a card that does not fit the graph it is to feed (another model's card, an edited file)."""
        input_names = [name for name, _ in inputs]
        if input_names != [self.input_name]:
            raise CardError(f"{where} has inputs {input_names} but its card ({self.source}) names {self.input_name!r}: "
                            "the card belongs to another model; rebuild the bundle or fix the card")
        self._require_outputs([name for name, _ in outputs], where)

    def _require_outputs(self, names: Sequence[str], where: str) -> None:
        missing = [n for n in self.output_names if n not in names]
        if missing:
            raise CardError(f"{where} has no output {', '.join(map(repr, missing))} (outputs: {', '.join(names)}) that "
                            f"its card ({self.source}) names: fix outputs.score / outputs.anomaly_map")

    def to_dict(self) -> dict[str, Any]:
        """The card as its YAML file and the manifest write it (``load_card`` reads it back)."""
        normalisation: Any = "inside" if self.mean is None else {"mean": list(self.mean), "std": list(self.std)}
        return {
            "card_version": CARD_VERSION,
            "input": {"name": self.input_name, "size": self.input_size, "layout": "NCHW",
                      "range": self.value_range, "normalisation": normalisation, "resize": self.resize},
            "outputs": {"score": self.score_output, "anomaly_map": self.map_output, "polarity": self.polarity,
                        "map_size": list(self.map_size) if self.map_size else None,
                        "smooth_sigma": self.smooth_sigma, "ignored": list(self.ignored_outputs)},
            "source": self.source,
            "assumptions": list(self.assumptions),
        }

    def describe(self) -> str:
        size = f"{self.input_size}x{self.input_size}"
        return (f"input {self.input_name!r} 1x3x{size} NCHW in [{self.value_range.replace('-', ', ')}], normalisation "
                f"{self.normalisation}; score {self.score_output!r}, map {self.map_output!r} "
                f"({'x'.join(map(str, self.map_size)) if self.map_size else '?'}, {self.polarity} = more anomalous)")


def card_digest(card: ModelCard) -> str:
    """What of a card decides a runner's outputs (not where it came from), as a short hash for cache keys."""
    return sha256_json({k: v for k, v in card.to_dict().items() if k not in ("source", "assumptions")})[:16]


# ---------------------------------------------------------------------------------------------- reading


_TOP = {"card_version", "input", "outputs", "source", "assumptions"}
_INPUT = {"name": str, "size": int, "layout": str, "range": str, "normalisation": (str, dict), "resize": str}
_OUTPUTS = {"score": str, "anomaly_map": str, "polarity": str, "map_size": (list, type(None)),
            "smooth_sigma": (float, int), "ignored": list}


def load_card(path: str | Path) -> dict[str, Any]:
    """The fields a card file sets (checked, not yet merged with the graph): see :func:`card_for_graph`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CardError(f"card file {path} does not exist: check the --card path")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CardError(f"card {path} is not readable YAML ({type(exc).__name__}): fix the file") from None
    return check_card_fields(data, f"card {path}")


def check_card_fields(data: Any, where: str) -> dict[str, Any]:
    """Check the types and values of a card's fields (all optional); errors name ``where`` and the field."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardError(f"{where}: the top level must be a mapping with input: and outputs:")
    for key in data:
        if key not in _TOP:
            raise CardError(f"{where}: unknown field {key} (allowed: {', '.join(sorted(_TOP))})")
    if data.get("card_version", CARD_VERSION) != CARD_VERSION:
        raise CardError(f"{where}: card_version {data['card_version']!r} is not {CARD_VERSION}, the one this edgedeploy reads")
    for section, schema in (("input", _INPUT), ("outputs", _OUTPUTS)):
        fields = data.get(section) or {}
        if not isinstance(fields, dict):
            raise CardError(f"{where}: field {section} must be a mapping")
        for key, value in fields.items():
            if key not in schema:
                raise CardError(f"{where}: unknown field {section}.{key} (allowed: {', '.join(schema)})")
            _check_type(value, schema[key], f"{where}: field {section}.{key}")
    _check_values(data, where)
    return data


def _check_type(value: Any, expected, what: str) -> None:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise CardError(f"{what} must be {names}, got {value!r}")


def _check_values(data: dict, where: str) -> None:
    inp, out = data.get("input") or {}, data.get("outputs") or {}
    if "size" in inp and inp["size"] <= 0:
        raise CardError(f"{where}: field input.size must be a positive number of pixels, got {inp['size']}")
    if inp.get("layout", "NCHW") != "NCHW":
        raise CardError(f"{where}: field input.layout is {inp['layout']!r}: only NCHW graphs are supported; export "
                        "the model with a 1x3xHxW input")
    if inp.get("range", "0-1") not in RANGES:
        raise CardError(f"{where}: field input.range must be one of {', '.join(RANGES)}, got {inp['range']!r}")
    if inp.get("resize", "bilinear") not in RESIZE_POLICIES:
        raise CardError(f"{where}: field input.resize must be {' or '.join(RESIZE_POLICIES)}, got {inp['resize']!r}")
    norm = inp.get("normalisation", "inside")
    if isinstance(norm, str) and norm not in ("inside", "imagenet"):
        raise CardError(f"{where}: field input.normalisation must be inside, imagenet or {{mean: [...], std: [...]}}, "
                        f"got {norm!r}")
    if isinstance(norm, dict):
        for key in ("mean", "std"):
            values = norm.get(key)
            if (not isinstance(values, list) or len(values) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise CardError(f"{where}: field input.normalisation.{key} must be a list of 3 numbers, got {values!r}")
        if any(v <= 0 for v in norm["std"]) or set(norm) - {"mean", "std"}:
            raise CardError(f"{where}: field input.normalisation must hold exactly mean and std, all std > 0")
    if out.get("polarity", "higher") not in POLARITIES:
        raise CardError(f"{where}: field outputs.polarity must be higher or lower, got {out['polarity']!r}")
    size = out.get("map_size")
    if size is not None and (len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size)):
        raise CardError(f"{where}: field outputs.map_size must be [h, w] in pixels, got {size!r}")
    if "smooth_sigma" in out and (out["smooth_sigma"] < 0 or not math.isfinite(out["smooth_sigma"])):
        raise CardError(f"{where}: field outputs.smooth_sigma must be >= 0, got {out['smooth_sigma']}")
    if not all(isinstance(v, str) for v in out.get("ignored", [])):
        raise CardError(f"{where}: field outputs.ignored must be a list of output names")


def card_from_dict(data: Mapping[str, Any], where: str) -> ModelCard:
    """A complete card (as ``to_dict`` writes it, e.g. in a manifest) back into a :class:`ModelCard`."""
    data = check_card_fields(dict(data), where)
    inp, out = data.get("input") or {}, data.get("outputs") or {}
    for section, key in (("input", "name"), ("input", "size"), ("outputs", "score"), ("outputs", "anomaly_map")):
        if key not in (inp if section == "input" else out):
            raise CardError(f"{where}: missing field {section}.{key}")
    mean, std = _normalisation(inp.get("normalisation", "inside"))
    return ModelCard(input_name=inp["name"], input_size=inp["size"], score_output=out["score"],
                     map_output=out["anomaly_map"], value_range=inp.get("range", "0-1"), mean=mean, std=std,
                     resize=inp.get("resize", "bilinear"), polarity=out.get("polarity", "higher"),
                     map_size=tuple(out["map_size"]) if out.get("map_size") else None,
                     smooth_sigma=float(out.get("smooth_sigma", 0.0)), ignored_outputs=tuple(out.get("ignored", [])),
                     source=str(data.get("source", where)), assumptions=tuple(data.get("assumptions") or ()))


def _normalisation(value) -> tuple[tuple | None, tuple | None]:
    if value == "inside":
        return None, None
    if value == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in value["mean"]), tuple(float(v) for v in value["std"])


def card_from_manifest(manifest: Mapping[str, Any], where: str) -> ModelCard:
    """The bundle's card; a bundle written before cards existed describes the EdgeZSAD I/O in ``model``."""
    model = manifest.get("model") or {}
    if isinstance(model.get("card"), dict):
        return card_from_dict(model["card"], f"{where} model.card")
    try:
        size = int(model["input"]["shape"][-1])
        score, amap = model["outputs"][:2]
        return ModelCard(model["input"]["name"], size, score, amap, map_size=None,
                         smooth_sigma=float((model.get("postprocess") or {}).get("smooth_sigma", 0.0)),
                         source=f"{where} (EdgeZSAD bundle without a card)")
    except (KeyError, TypeError, ValueError, IndexError):
        raise CardError(f"{where} describes no model input and outputs: rebuild the bundle") from None


# ---------------------------------------------------------------------------------------------- detection


def card_for_graph(inputs: Sequence[tuple[str, Shape]], outputs: Sequence[tuple[str, Shape]],
                   fields: Mapping[str, Any] | None = None, where: str = "the model") -> ModelCard:
    """The card for a graph with these float ``inputs`` and ``outputs`` ((name, shape) pairs), from the card
    ``fields`` a user gave (all optional) and what the graph's names say (anomalib's export, EdgeZSAD's).

    What the graph decides is checked against what the card says; what neither says is assumed, and each
    assumption is listed in the card's ``assumptions``.
    """
    fields = dict(fields or {})
    given_in, given_out = dict(fields.get("input") or {}), dict(fields.get("outputs") or {})
    names = [name for name, _ in outputs]
    style = _style(names)
    assumptions: list[str] = []
    input_name, shape = _image_input(inputs, given_in, where)
    size = _input_size(shape, given_in, style, where, assumptions)
    score_name, map_name = _output_names(names, given_out, style, where)
    map_size = _map_size(dict(outputs)[map_name], size, map_name, given_out, where)
    for key, (value, why) in ASSUMED.get(style, {}).items():
        section = given_out if key in _OUTPUTS else given_in
        if key not in section:
            section[key] = value
            assumptions.append(f"{key} {value} ({why})")
    mean, std = _normalisation(given_in.get("normalisation", "inside"))
    return ModelCard(input_name=input_name, input_size=size, score_output=score_name, map_output=map_name,
                     value_range=given_in.get("range", "0-1"), mean=mean, std=std,
                     resize=given_in.get("resize", "bilinear"), polarity=given_out.get("polarity", "higher"),
                     map_size=map_size, smooth_sigma=float(given_out.get("smooth_sigma", 0.0)),
                     ignored_outputs=tuple(n for n in names if n not in (score_name, map_name)),
                     source=str(fields.get("source") or ("anomalib export (detected)" if style == "anomalib" else where)),
                     assumptions=tuple(assumptions))


def _style(output_names: list[str]) -> str:
    if ANOMALIB_SCORE in output_names and ANOMALIB_MAP in output_names:
        return "anomalib"
    if all(n in output_names for n in EDGEZSAD_OUTPUTS):
        return "edgezsad"
    return "other"


def _image_input(inputs, given: dict, where: str) -> tuple[str, Shape]:
    if len(inputs) != 1:
        listed = ", ".join(f"{n} {list(s)}" for n, s in inputs) or "none"
        raise CardError(f"{where} has {len(inputs)} float inputs ({listed}): edgedeploy scores graphs with one image "
                        "input; export the model with a single 1x3xHxW input")
    name, shape = inputs[0]
    if given.get("name", name) != name:
        raise CardError(f"the card names input {given['name']!r} but {where}'s input is {name!r}: fix input.name")
    if len(shape) != 4 or shape[1] != 3:
        raise CardError(f"{where}'s input {name!r} has shape {list(shape)}: expected N x 3 x H x W (NCHW, RGB); "
                        "export the model channel-first with 3 channels")
    return name, shape


def _static(dim) -> int | None:
    return int(dim) if isinstance(dim, (int, np.integer)) and int(dim) > 0 else None


def _input_size(shape: Shape, given: dict, style: str, where: str, assumptions: list[str]) -> int:
    h, w = _static(shape[2]), _static(shape[3])
    if h is not None and w is not None and h != w:
        raise CardError(f"{where}'s input is {h}x{w}: only square inputs are supported; export it at SxS")
    if "size" in given:
        if h is not None and h != given["size"]:
            raise CardError(f"the card says input.size {given['size']} but {where}'s input is fixed at {h}x{w}: "
                            "fix input.size or re-export")
        return int(given["size"])
    if h is not None:
        return h
    if style == "anomalib":
        assumptions.append(f"input size {ANOMALIB_DEFAULT_SIZE} (the export leaves it dynamic; anomalib's default "
                           "image size; set input.size in a card to change it)")
        return ANOMALIB_DEFAULT_SIZE
    raise CardError(f"{where}'s input has a dynamic spatial size ({list(shape)}): the devices need static shapes; "
                    "give the size in a card (input.size)")


def _output_names(names: list[str], given: dict, style: str, where: str) -> tuple[str, str]:
    defaults = {"anomalib": (ANOMALIB_SCORE, ANOMALIB_MAP), "edgezsad": EDGEZSAD_OUTPUTS}.get(style, (None, None))
    chosen = (given.get("score", defaults[0]), given.get("anomaly_map", defaults[1]))
    for name in chosen:
        if name is None or name not in names:
            found = ", ".join(names) or "none"
            what = f"no output {name!r}" if name else "no output it can identify as the image score and anomaly map"
            raise CardError(f"{where} has {what} (outputs: {found}): name them in a card, outputs.score: NAME and "
                            "outputs.anomaly_map: NAME (see docs/models.md)")
    if chosen[0] == chosen[1]:
        raise CardError(f"the card names {chosen[0]!r} as both the score and the anomaly map: they must differ")
    return chosen


def _map_size(shape: Shape, size: int, name: str, given: dict, where: str) -> tuple[int, int] | None:
    if len(shape) not in (2, 3, 4) or (len(shape) == 4 and _static(shape[1]) not in (1, None)):
        raise CardError(f"{where}'s map output {name!r} has shape {list(shape)}: expected N x 1 x h x w or N x h x w")
    h, w = _static(shape[-2]), _static(shape[-1])
    if given.get("map_size") is not None:
        gh, gw = given["map_size"]
        if (h is not None and h != gh) or (w is not None and w != gw):
            raise CardError(f"the card says outputs.map_size {[gh, gw]} but {where}'s {name!r} is {h}x{w}: fix the card")
        h, w = gh, gw
    if h is None or w is None:
        return None
    check_map_aspect(h, w, size, name, where)
    return (h, w)


def check_map_aspect(h: int, w: int, size: int, name: str, where: str) -> None:
    """A map must cover the square input with square cells, or it cannot be upsampled onto the image."""
    if h != w:
        raise CardError(f"{where}'s map output {name!r} is {h}x{w} for a {size}x{size} input: its aspect differs "
                        "from the input's, so it cannot be laid over the image; export a map of the input's aspect")


def with_map_size(card: ModelCard, map_size: tuple[int, int], where: str) -> ModelCard:
    check_map_aspect(*map_size, card.input_size, card.map_output, where)
    return replace(card, map_size=tuple(int(v) for v in map_size))
