#!/usr/bin/env python
"""Make a small anomalib PaDiM ONNX model and its test data, offline, on CPU (the slow test's fixture).

Usage: python tests/host/anomalib_padim.py OUT_DIR --size S [--seed N]

Writes a synthetic MVTec-AD-layout dataset (textures; test defects are dark blobs with masks)::

    OUT_DIR/data/blobs/train/good/NNN.png                (16)
    OUT_DIR/data/blobs/test/{good,defect}/NNN.png        (8 + 8)
    OUT_DIR/data/blobs/ground_truth/defect/NNN_mask.png  (0/255)

which both anomalib's ``MVTecAD`` datamodule and edgedeploy's ``--bench mvtec --data-root OUT_DIR/data``
read; trains PaDiM (resnet18, random init, 1 epoch) on it and exports it with anomalib's own
``Engine.export(export_type=ExportType.ONNX)`` to one self-contained ``.onnx``. Everything else
(anomalib's versioned ``results/`` dir, the train/export log) stays under OUT_DIR. The last line
printed is ``onnx: PATH``.

anomalib 2.7.0 facts relied on (file paths inside the ``anomalib`` package):

* ``models/image/padim/torch_model.py``: ``pre_trained=False`` builds the timm backbone without
  downloading weights; n_features defaults to 100 for resnet18; the random channel subset
  ``idx`` comes from ``torch.randperm`` (so ``torch.manual_seed`` fixes it); the Gaussian's
  ``inv_covariance`` is ``100 x 100 x (S/4)^2`` floats (layer1 is stride 4), the bulk of the file.
* ``engine/engine.py`` (``_setup_anomalib_callbacks``): a ``ModelCheckpoint`` writing
  ``weights/lightning/model.ckpt`` is added unless one is passed, hence ``save_top_k=0``;
  ``default_root_dir`` (default ``./results``) gets ``Padim/<dataset>/<category>/v0`` appended.
* ``data/datasets/image/mvtecad.py`` (``make_mvtec_ad_dataset``): masks are the sorted files under
  ``ground_truth/`` paired with the sorted anomalous images; each image stem must be in its mask's stem.
  ``data/datamodules/image/mvtecad.py``: ``prepare_data`` downloads only if ``root/category`` is missing.
* ``models/components/base/export_mixin/mixin.py`` (``to_onnx``): dynamo exporter only (needs
  ``onnxscript``); the default opset 14 is raised to 18 by torch anyway (and down-conversion fails
  on Pad), so 18 is asked for; extra kwargs (``external_data=False``) go to ``torch.onnx.export``;
  ``input_size=None`` keeps batch/height/width dynamic; the graph includes the pre-processor
  (Resize to S + ImageNet Normalize: feed RGB float 0..1 NCHW) and post-processor; the output
  names are those of the non-None ``InferenceBatch`` fields (pred_score, pred_label, anomaly_map, pred_mask).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import warnings
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach the Hugging Face hub (timm's weight source)
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
from PIL import Image

CATEGORY = "blobs"


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blocky colour noise plus fine noise, uint8 HxWx3."""
    coarse = rng.normal(0.5, 0.15, (size // 8, size // 8, 3))
    img = np.kron(coarse, np.ones((8, 8, 1)))[:size, :size] + rng.normal(0, 0.05, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """A filled ellipse, bool HxW."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    ry, rx = rng.integers(max(2, size // 16), size // 6, 2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_dataset(root: Path, size: int, seed: int, n_train: int = 16, n_test: int = 8) -> Path:
    """Write the MVTec-AD-layout ``root/blobs`` category; returns ``root``."""
    rng = np.random.default_rng(seed)
    cat = root / CATEGORY
    dirs = {k: cat / k for k in ("train/good", "test/good", "test/defect", "ground_truth/defect")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(_texture(rng, size)).save(dirs["train/good"] / f"{i:03d}.png")
    for i in range(n_test):
        Image.fromarray(_texture(rng, size)).save(dirs["test/good"] / f"{i:03d}.png")
        img, mask = _texture(rng, size), _blob(rng, size)
        img[mask] = (img[mask] * 0.15).astype(np.uint8)  # dark blob
        Image.fromarray(img).save(dirs["test/defect"] / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(dirs["ground_truth/defect"] / f"{i:03d}_mask.png")
    return root


def train_and_export(out: Path, size: int, seed: int) -> Path:
    """Train PaDiM on ``out/data/blobs`` and export ``out/export/weights/onnx/padim.onnx``."""
    warnings.filterwarnings("ignore")
    import torch
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.data import MVTecAD
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from anomalib.models import Padim

    for name in ("lightning", "lightning.pytorch", "lightning_fabric", "pytorch_lightning", "anomalib"):
        logging.getLogger(name).setLevel(logging.ERROR)  # Lightning adds its handlers at import
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    datamodule = MVTecAD(root=out / "data", category=CATEGORY, train_batch_size=8, eval_batch_size=8,
                         num_workers=0, seed=seed)
    model = Padim(backbone="resnet18", pre_trained=False,  # random init: no weight download
                  pre_processor=Padim.configure_pre_processor((size, size)), visualizer=False)
    engine = Engine(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=out / "results",
                    callbacks=[ModelCheckpoint(dirpath=out / "results", save_top_k=0, save_last=False)])
    with open(out / "train_export.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        engine.fit(datamodule=datamodule, model=model)
        onnx_path = engine.export(model=model, export_type=ExportType.ONNX, export_root=out / "export",
                                  model_file_name="padim",
                                  onnx_kwargs={"opset_version": 18, "external_data": False})
    if onnx_path is None or not Path(onnx_path).is_file():
        raise SystemExit(f"anomalib export wrote no ONNX; see {out / 'train_export.log'}")
    return Path(onnx_path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--size", type=int, default=64, help="square image size, a multiple of 16 (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.size < 32 or args.size % 16:
        ap.error("--size must be a multiple of 16, at least 32")
    out = args.out_dir.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = make_dataset(out / "data", args.size, args.seed)
    onnx_path = train_and_export(out, args.size, args.seed)
    print(f"data: {data}")
    print(f"onnx: {onnx_path}")


if __name__ == "__main__":
    main()
