"""Helpers for the training tests: a tiny training recipe on the small model, fake Real-IAD trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

TINY_RECIPE = """\
name: {name}
description: "tiny test run: heads of the small model on a few demo images"
model_recipe: edgezsad-tinyvit5m-224
mode: {mode}
backbone_init: seeded
seed: 0
threads: 1
source:
  bench: demo
  categories: [brick]
sampling:
  splits: {splits}
  normal_per_category: 4
  anomalous_per_category: 3
  views: null
  resolution: 224
evaluate: {evaluate}
schedule:
  epochs: {epochs}
  batch_size: 4
  warmup_epochs: 1
  checkpoint_every: 1
optimizer:
  lr: 3.0e-3
  backbone_lr: 1.0e-5
  weight_decay: 0.01
  betas: [0.9, 0.999]
  min_lr_ratio: 0.0
loss:
  global_weight: 1.0
  fused_weight: 1.0
  pixel_weight: 1.0
  positive_fraction: 0.05
"""

EVAL_GRAVEL = "{bench: demo, categories: [gravel], split: test}"


def write_tiny_recipe(folder: Path, name: str = "tiny", mode: str = "heads", epochs: int = 2,
                      splits: str = "[train, test]", evaluate: str = EVAL_GRAVEL) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(TINY_RECIPE.format(name=name, mode=mode, epochs=epochs, splits=splits, evaluate=evaluate))
    return path


def _img(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, on: bool = True, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size, size), np.uint8)
    if on:
        a[8:16, 8:16] = 255
    Image.fromarray(a).save(path)
    return path


def make_realiad(root: Path, categories=("audiojack", "pcb"), samples: int = 6, views=("C1", "C2", "C3", "C4", "C5"),
                 empty_mask: str | None = None) -> Path:
    """Real-IAD layout: <cat>/{OK,NG/<code>}/S<id>/<cat>_<id>_<OK|NG>_<view>_<stamp>.jpg, masks beside as .png,
    splits in realiad_jsons/<cat>.json. Odd sample ids are NG (code AK), even OK; train = OK samples 0 and 2."""
    seed = 0
    for cat in categories:
        cat_dir = root / cat
        train, test = [], []
        for sid in range(samples):
            ng = sid % 2 == 1
            for view in views:
                seed += 1
                stem = f"{cat}_{sid:04d}_{'NG' if ng else 'OK'}_{view}_20231021120000"
                folder = cat_dir / ("NG/AK" if ng else "OK") / f"S{sid:04d}"
                img = _img(folder / f"{stem}.jpg", seed)
                entry = {"category": cat, "anomaly_class": "AK" if ng else "OK",
                         "image_path": img.relative_to(cat_dir).as_posix(), "mask_path": None}
                if ng:
                    mask = _mask(folder / f"{stem}.png", on=stem != empty_mask)
                    entry["mask_path"] = mask.relative_to(cat_dir).as_posix()
                (train if (not ng and sid in (0, 2)) else test).append(entry)
        (root / "realiad_jsons").mkdir(parents=True, exist_ok=True)
        doc = {"meta": {"prefix": "", "normal_class": "OK", "pre_transform": False}, "train": train, "test": test}
        (root / "realiad_jsons" / f"{cat}.json").write_text(json.dumps(doc))
    return root
