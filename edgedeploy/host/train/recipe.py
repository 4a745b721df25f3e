"""Training recipes: one YAML file each in ``recipes/train/`` (top level), validated strictly on load.

A training recipe is a different kind of file from the model/build recipes in ``recipes/*.yaml``:
it names the model recipe it trains (``model_recipe``) and fixes everything else that decides the
trained weights — the source benchmark and categories, the per-category sampling, the mode
(``heads``: EdgeGLR only, frozen backbone; ``full``: everything), the backbone initialisation, the
losses, AdamW and its schedule, the seed and the thread count. Every field must be present;
``null`` is allowed where the schema below says so. Unknown fields are errors.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedeploy.core import yamlfiles
from edgedeploy.core.model_recipes import recipes_dir
from edgedeploy.core.errors import TrainError

DEFAULT_TRAIN_RECIPE = "demo-default"
MODES = ("heads", "full")
SPLITS = ("train", "test")

_NULL = type(None)
_EVALUATE: dict[str, Any] = {"bench": str, "categories": (list, _NULL), "split": str}
_SCHEMA: dict[str, Any] = {
    "name": str,
    "description": str,
    "model_recipe": str,
    "mode": str,
    "backbone_init": str,
    "seed": int,
    "threads": int,
    "source": {"bench": str, "categories": (list, _NULL)},
    "sampling": {
        "splits": list,
        "normal_per_category": (int, _NULL),
        "anomalous_per_category": (int, _NULL),
        "views": (list, _NULL),
        "resolution": int,
    },
    "evaluate": (dict, _NULL),  # checked against _EVALUATE when given
    "schedule": {"epochs": int, "batch_size": int, "warmup_epochs": int, "checkpoint_every": int},
    "optimizer": {"lr": float, "backbone_lr": float, "weight_decay": float, "betas": list, "min_lr_ratio": float},
    "loss": {"global_weight": float, "fused_weight": float, "pixel_weight": float, "positive_fraction": float},
}
KIND = "training recipe"


@dataclass(frozen=True)
class BenchSpec:
    """A benchmark and some of its categories (``None``: all), written ``bench[:cat,cat]``."""

    bench: str
    categories: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return f"{self.bench}:{','.join(self.categories)}" if self.categories else self.bench

    def overlaps(self, other: "BenchSpec") -> bool:
        if self.bench != other.bench:
            return False
        if self.categories is None or other.categories is None:
            return True
        return bool(set(self.categories) & set(other.categories))


def parse_bench_spec(text: str, option: str = "--source") -> BenchSpec:
    """``demo:brick,grass`` -> BenchSpec("demo", ("brick", "grass")); ``demo`` -> all categories."""
    from edgedeploy.evaluation.data.benchmarks import BENCHMARK_NAMES, normalise_name

    bench, sep, cats = str(text).strip().partition(":")
    name = normalise_name(bench)
    if name not in BENCHMARK_NAMES:
        raise TrainError(f"{option} {text!r}: unknown benchmark {bench!r}; write BENCH[:CATEGORY,...] with BENCH one of "
                         f"{', '.join(BENCHMARK_NAMES)}")
    categories = tuple(c.strip() for c in cats.split(",") if c.strip()) or None
    if sep and not categories:
        raise TrainError(f"{option} {text!r}: no categories after ':'; write e.g. demo:brick,grass (or just demo for all)")
    return BenchSpec(name, tuple(dict.fromkeys(categories)) if categories else None)


@dataclass(frozen=True)
class Sampling:
    splits: tuple[str, ...]
    normal_per_category: int | None        # None: every normal image
    anomalous_per_category: int | None     # None: every anomalous image
    views: tuple[str, ...] | None          # Real-IAD camera views (C1..C5); None: every image
    resolution: int


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    warmup_epochs: int
    checkpoint_every: int


@dataclass(frozen=True)
class Optimizer:
    lr: float
    backbone_lr: float
    weight_decay: float
    betas: tuple[float, float]
    min_lr_ratio: float


@dataclass(frozen=True)
class Loss:
    global_weight: float
    fused_weight: float
    pixel_weight: float
    positive_fraction: float


@dataclass(frozen=True)
class TrainRecipe:
    name: str
    path: Path
    sha256: str
    description: str
    model_recipe: str
    mode: str
    backbone_init: str
    seed: int
    threads: int
    source: BenchSpec
    sampling: Sampling
    evaluate: BenchSpec | None
    evaluate_split: str
    schedule: Schedule
    optimizer: Optimizer
    loss: Loss

    def resolved(self) -> dict[str, Any]:
        """Everything that decides the weights, as plain JSON (recorded in checkpoints and run keys)."""
        out = dataclasses.asdict(self)
        out.pop("path")
        out.pop("sha256")
        out.pop("description")
        for key in ("source", "evaluate"):
            if out[key] is not None:
                out[key]["categories"] = list(out[key]["categories"]) if out[key]["categories"] else None
        return _plain(out)

    def replace(self, **changes: Any) -> "TrainRecipe":
        return dataclasses.replace(self, **changes)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def train_recipes_dir() -> Path:
    override = os.environ.get("EDGEDEPLOY_TRAIN_RECIPES")
    return Path(override) if override else recipes_dir() / "train"


def list_train_recipes() -> list[str]:
    return sorted(p.stem for p in train_recipes_dir().glob("*.yaml"))


def load_train_recipe(name_or_path: str | os.PathLike[str] = DEFAULT_TRAIN_RECIPE) -> TrainRecipe:
    path = yamlfiles.resolve(str(name_or_path), train_recipes_dir(), KIND, TrainError)
    data, sha256 = yamlfiles.load(path, KIND, TrainError, _SCHEMA)
    if data["evaluate"] is not None:
        yamlfiles.check(data["evaluate"], _EVALUATE, f"{KIND} {path}", TrainError, "evaluate.")
    return _build(data, path, sha256)


def _build(data: dict, path: Path, sha256: str) -> TrainRecipe:
    def bad(msg: str) -> TrainError:
        return TrainError(f"training recipe {path}: {msg}")

    if data["mode"] not in MODES:
        raise bad(f"mode must be one of {', '.join(MODES)}, got {data['mode']!r}")
    if data["threads"] < 1:
        raise bad("threads must be >= 1")
    source = parse_bench_spec(data["source"]["bench"], "source.bench")
    if source.categories:
        raise bad("source.bench names the benchmark only; list categories in source.categories")
    source = BenchSpec(source.bench, _str_tuple(data["source"]["categories"], "source.categories", bad))
    s = data["sampling"]
    splits = _str_tuple(s["splits"], "sampling.splits", bad)
    if not splits or any(x not in SPLITS for x in splits):
        raise bad(f"sampling.splits must list some of {', '.join(SPLITS)}, got {s['splits']!r}")
    for key in ("normal_per_category", "anomalous_per_category"):
        if s[key] is not None and s[key] < 1:
            raise bad(f"sampling.{key} must be >= 1 (or null for every image)")
    if s["resolution"] < 32:
        raise bad("sampling.resolution must be >= 32")
    evaluate, eval_split = None, "test"
    if data["evaluate"] is not None:
        e = data["evaluate"]
        evaluate = parse_bench_spec(e["bench"], "evaluate.bench")
        evaluate = BenchSpec(evaluate.bench, _str_tuple(e["categories"], "evaluate.categories", bad))
        eval_split = e["split"]
        if eval_split not in SPLITS:
            raise bad(f"evaluate.split must be one of {', '.join(SPLITS)}")
    sc = data["schedule"]
    if sc["epochs"] < 1 or sc["batch_size"] < 1 or sc["checkpoint_every"] < 1 or sc["warmup_epochs"] < 0:
        raise bad("schedule: epochs, batch_size and checkpoint_every must be >= 1, warmup_epochs >= 0")
    o = data["optimizer"]
    if len(o["betas"]) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o["betas"]):
        raise bad("optimizer.betas must be two numbers in [0, 1)")
    if o["lr"] <= 0 or o["backbone_lr"] < 0 or o["weight_decay"] < 0 or not 0 <= o["min_lr_ratio"] <= 1:
        raise bad("optimizer: lr must be > 0, backbone_lr and weight_decay >= 0, min_lr_ratio within [0, 1]")
    lo = data["loss"]
    if min(lo["global_weight"], lo["fused_weight"], lo["pixel_weight"]) < 0:
        raise bad("loss weights must be >= 0")
    if not 0 < lo["positive_fraction"] <= 1:
        raise bad("loss.positive_fraction must be within (0, 1]")
    return TrainRecipe(
        name=data["name"], path=path, sha256=sha256, description=data["description"],
        model_recipe=data["model_recipe"], mode=data["mode"], backbone_init=str(data["backbone_init"]),
        seed=data["seed"], threads=data["threads"], source=source,
        sampling=Sampling(splits=splits, normal_per_category=s["normal_per_category"],
                          anomalous_per_category=s["anomalous_per_category"],
                          views=_str_tuple(s["views"], "sampling.views", bad), resolution=s["resolution"]),
        evaluate=evaluate, evaluate_split=eval_split,
        schedule=Schedule(**sc),
        optimizer=Optimizer(lr=float(o["lr"]), backbone_lr=float(o["backbone_lr"]), weight_decay=float(o["weight_decay"]),
                            betas=(float(o["betas"][0]), float(o["betas"][1])), min_lr_ratio=float(o["min_lr_ratio"])),
        loss=Loss(**{k: float(v) for k, v in lo.items()}),
    )


def _str_tuple(value: Any, name: str, bad) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise bad(f"{name} must be a list of names")
    if not value:
        raise bad(f"{name} is empty; write null for all")
    return tuple(dict.fromkeys(v.strip() for v in value))
