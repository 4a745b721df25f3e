"""The training run: data, losses, AdamW with warmup + cosine, interval states, resume, evaluation.

Determinism: the run sets ``torch.use_deterministic_algorithms(True)`` and the recipe's thread
count, seeds everything from the recipe (backbone from the model recipe's seed, heads and batch
order from the recipe's), feeds the backbone one image at a time, and computes the learning rate
from the step number alone; a training state holds the trainable tensors and AdamW's moments, so a
run resumed from a state ends with the same bytes as one that never stopped. Nothing timed or
path-dependent goes into the checkpoint.

The learning-rate schedule and the losses are ``objective.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedeploy.evaluation.data import load_benchmark, load_batch
from edgedeploy.core.hashing import sha256_file, sha256_json
from edgedeploy.host.hostmem import keep_freed_memory
from edgedeploy.host.model.checkpoint import seeded_model
from edgedeploy.host.model.edgezsad import EdgeZSAD
from edgedeploy.host.model.seeded import seeded_init
from edgedeploy.core.model_recipes import Recipe
from edgedeploy.host.train.backbone import BackboneInit, init_backbone
from edgedeploy.host.train.ckptio import read_metadata, save_checkpoint
from edgedeploy.core.errors import TrainError
from edgedeploy.core.resources import cache_root
from edgedeploy.host.train.objective import cell_targets, losses, lr_factor
from edgedeploy.core.extras import package_version
from edgedeploy.host.train.features import FeatureCache, extract, feature_key, pooled_features, readout_logits
from edgedeploy.host.train.recipe import BenchSpec, TrainRecipe
from edgedeploy.host.train.sampling import SourceSet, sample_source

STATE_KIND = "edgedeploy-train-state"
RUN_FORMAT = 2  # 2: heads drawn by model/seeded.py
Log = Callable[[str], None]


@dataclass
class TrainOptions:
    out: Path
    data_root: Path | None = None
    eval_data_root: Path | None = None
    work_dir: Path | None = None
    feature_cache: Path | None = None        # None: default cache root; see no_feature_cache
    no_feature_cache: bool = False
    backbone_weights: str | None = None      # overrides recipe.backbone_init: seeded | hub | FILE
    device: str = "auto"
    resume: Path | None = None
    restart: bool = False
    command: str = "edgedeploy train"        # the recreate command recorded in the checkpoint
    show_progress: bool | None = None        # None: a bar when stderr is a terminal
    max_epochs: int | None = None            # stop after this epoch (tests: an interrupted run)


@dataclass
class TrainResult:
    out: Path | None
    sha256: str | None
    size: int
    metadata: dict[str, Any]
    resumed_from_epoch: int
    seconds: float
    finished: bool = True
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def deterministic(threads: int, device: torch.device) -> Iterator[None]:
    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cuda":  # cuBLAS is deterministic only with a fixed workspace (set before its first use)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_det, warn_only=previous_warn)


def resolve_device(spec: str, mode: str) -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if mode == "full" and torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {spec}: no CUDA GPU is visible here; use --device cpu (slow for --mode full)")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise TrainError(f"--device {spec!r} is not a torch device; use cpu, cuda or cuda:N") from None


def _reinit_readout(model: EdgeZSAD, seed: int) -> None:
    """The heads drawn from the training recipe's seed, the same bits on every CPU."""
    seeded_init(model.readout, seed, prefix="readout.")


def summary_line(recipe: TrainRecipe, source: SourceSet, backbone: BackboneInit) -> str:
    if recipe.mode == "heads":
        return f"EdgeGLR heads trained on {source.spec.label} over {backbone.describe()}"
    return f"EdgeZSAD fine-tuned end to end on {source.spec.label} from {backbone.describe()}"


# --------------------------------------------------------------------------------------- run


class _Run:
    def __init__(self, recipe: TrainRecipe, model_recipe: Recipe, opts: TrainOptions, log: Log):
        self.recipe, self.model_recipe, self.opts, self.log = recipe, model_recipe, opts, log
        self.device = resolve_device(opts.device, recipe.mode)
        self.size = model_recipe.model.input_size
        self.notes: list[str] = []

    # -- setup
    def prepare(self) -> None:
        r, opts = self.recipe, self.opts
        self.source = sample_source(r.source, r.sampling, r.seed, opts.data_root)
        for note in self.source.notes:
            self._note(note)
        per_cat = ", ".join(f"{c} {v['normal']}+{v['anomalous']}" for c, v in self.source.counts.items())
        self.log(f"source {self.source.spec.label} at {self.source.root}: {len(self.source.items)} images "
                 f"({self.source.n_normal} normal + {self.source.n_anomalous} anomalous; {per_cat}); "
                 f"sampling sha256 {self.source.sha256[:16]}")
        self.eval_samples = None
        if r.evaluate is not None:
            cats = list(r.evaluate.categories) if r.evaluate.categories else None
            bench = load_benchmark(r.evaluate.bench, opts.eval_data_root, cats, r.evaluate_split)
            self.eval_spec = BenchSpec(bench.name, tuple(bench.categories))
            self.eval_samples = list(bench.samples)
            self.eval_unseen = not self.eval_spec.overlaps(self.source.spec)
            if not self.eval_unseen:
                self._note(f"evaluation target {self.eval_spec.label} overlaps the training source "
                           f"{self.source.spec.label}: its AUROCs are not zero-shot")
        self.model = seeded_model(self.model_recipe)
        self.backbone = init_backbone(self.model, opts.backbone_weights or r.backbone_init, self.model_recipe.model.seed,
                                      self.model_recipe)
        for note in self.backbone.notes:
            self.log(f"note: {note}")
        _reinit_readout(self.model, r.seed)
        self.model.to(self.device)
        self.model.eval()  # BatchNorm statistics stay frozen, drop-path off, in both modes
        heads = r.mode == "heads"
        for p in self.model.backbone.parameters():
            p.requires_grad_(not heads)
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.run_key = sha256_json({
            "format": RUN_FORMAT, "recipe": r.resolved(), "model": asdict(self.model_recipe.model),
            "sampling": self.source.sha256, "backbone": self.backbone.sha256, "device": self.device.type,
            "torch": package_version("torch"), "timm": package_version("timm")})
        self.work_dir = Path(opts.work_dir) if opts.work_dir else cache_root() / "train" / self.run_key[:16]
        self.work_dir.mkdir(parents=True, exist_ok=True)
        features_dir = None if opts.no_feature_cache else (opts.feature_cache or cache_root() / "features")
        self.cache = FeatureCache(features_dir, feature_key(self.model, self.backbone.sha256, r.threads, self.device.type))
        self.grid = self.size // self.model.map_stride
        items = self.source.items
        self.labels = torch.tensor([float(i.label) for i in items], device=self.device)
        pos, neg = cell_targets([i.sample.mask_path for i in items], self.size, self.grid, r.loss.positive_fraction)
        self.pos, self.neg = pos.to(self.device), neg.to(self.device)
        if heads:
            start = time.perf_counter()
            g, loc, computed = extract(self.model, [(i.sample.path, i.image_sha256) for i in items], self.cache,
                                       self.device, "source features", opts.show_progress)
            self.global_feats, self.local_feats = g.to(self.device), loc.to(self.device)
            self.log(f"features: {len(items)} source images, {computed} computed "
                     f"({time.perf_counter() - start:.1f}s), {len(items) - computed} from the cache")

    def _note(self, note: str) -> None:
        self.notes.append(note)
        self.log(f"warning: {note}")

    # -- batches
    def _forward(self, idx: torch.Tensor):
        if self.recipe.mode == "heads":
            return readout_logits(self.model.readout, self.global_feats[idx], self.local_feats[idx])
        paths = [self.source.items[int(i)].sample.path for i in idx]
        x = torch.from_numpy(load_batch(paths, self.size)).to(self.device)
        g, loc = pooled_features(self.model, self.model.features(x))
        return readout_logits(self.model.readout, g, loc)

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.recipe.optimizer
        heads = [p for n, p in self.trainable.items() if n.startswith("readout.")]
        groups = [{"params": heads, "lr": o.lr, "base_lr": o.lr}]
        backbone = [p for n, p in self.trainable.items() if not n.startswith("readout.")]
        if backbone:
            groups.append({"params": backbone, "lr": o.backbone_lr, "base_lr": o.backbone_lr})
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, foreach=False)

    # -- states
    def _state_meta(self, epoch: int, step: int, history: list[dict]) -> dict:
        return {"kind": STATE_KIND, "run_key": self.run_key, "train_recipe": {"name": self.recipe.name,
                "resolved": self.recipe.resolved()}, "sampling_sha256": self.source.sha256,
                "backbone_sha256": self.backbone.sha256, "epoch": epoch, "step": step,
                "epochs": self.recipe.schedule.epochs, "history": history}

    def _save_state(self, opt: torch.optim.Optimizer, epoch: int, step: int, history: list[dict]) -> Path:
        tensors = {f"param.{n}": p.detach() for n, p in self.trainable.items()}
        for idx, st in opt.state_dict()["state"].items():
            for key, value in st.items():
                tensors[f"optim.{idx}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
        path = self.work_dir / f"state-e{epoch:04d}.safetensors"
        save_checkpoint(path, tensors, self._state_meta(epoch, step, history))
        for old in sorted(self.work_dir.glob("state-e*.safetensors"))[:-2]:
            old.unlink(missing_ok=True)
        return path

    def _find_state(self) -> Path | None:
        if self.opts.resume is not None:
            self._check_resume(Path(self.opts.resume))
            return Path(self.opts.resume)
        if self.opts.restart:
            for old in self.work_dir.glob("state-e*.safetensors"):
                old.unlink(missing_ok=True)
            return None
        for path in sorted(self.work_dir.glob("state-e*.safetensors"), reverse=True):
            if read_metadata(path).get("run_key") == self.run_key:
                return path
        return None

    def _check_resume(self, path: Path) -> None:
        if not path.is_file():
            raise TrainError(f"--resume {path} does not exist")
        meta = read_metadata(path)
        theirs = (meta.get("train_recipe") or {}) if isinstance(meta.get("train_recipe"), dict) else {}
        if not theirs:
            raise TrainError(f"--resume {path} is not an edgedeploy training state (no recipe recorded); resume from a "
                             f"state-eNNNN.safetensors file that `edgedeploy train` wrote")
        ours = self.recipe.resolved()
        if theirs.get("name") != self.recipe.name or theirs.get("resolved", {}).get("model_recipe") != ours["model_recipe"]:
            raise TrainError(f"--resume {path} comes from a run of training recipe {theirs.get('name')!r} "
                             f"(model {theirs.get('resolved', {}).get('model_recipe')}), not {self.recipe.name!r} "
                             f"({ours['model_recipe']}): resume only from a state of the same recipe")
        if meta.get("kind") != STATE_KIND:
            raise TrainError(f"--resume {path} is a finished checkpoint, not a training state: resume from a "
                             f"state-eNNNN.safetensors in the run's work dir ({self.work_dir})")
        if meta.get("run_key") != self.run_key:
            differ = [k for k in ours if theirs.get("resolved", {}).get(k) != ours[k]]
            if meta.get("sampling_sha256") != self.source.sha256:
                differ.append("source images (sampling hash)")
            if meta.get("backbone_sha256") != self.backbone.sha256:
                differ.append("backbone weights")
            raise TrainError(f"--resume {path} comes from a run of recipe {self.recipe.name} with other settings "
                             f"({', '.join(differ) or 'device or torch/timm versions'}): rerun with the same options")

    def _load_state(self, path: Path, opt: torch.optim.Optimizer) -> tuple[int, int, list[dict]]:
        from safetensors.torch import load_file

        meta = read_metadata(path)
        tensors = load_file(str(path))
        with torch.no_grad():
            for name, p in self.trainable.items():
                key = f"param.{name}"
                if key not in tensors or tensors[key].shape != p.shape:
                    raise TrainError(f"training state {path} does not fit this run (tensor {name}); use --restart")
                p.copy_(tensors[key].to(p.device))
        sd = opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, field_name = key.split(".", 2)
                state.setdefault(int(idx), {})[field_name] = value
        sd["state"] = state
        opt.load_state_dict(sd)
        return int(meta["epoch"]), int(meta["step"]), list(meta.get("history") or [])

    # -- main loop
    def train(self) -> tuple[int, list[dict], int]:
        r = self.recipe
        n = len(self.source.items)
        bs = r.schedule.batch_size
        per_epoch = math.ceil(n / bs)
        total = r.schedule.epochs * per_epoch
        warmup = min(r.schedule.warmup_epochs, r.schedule.epochs - 1) * per_epoch  # never past the end
        opt = self._optimizer()
        start_epoch, step, history = 0, 0, []
        state = self._find_state()
        if state is not None:
            start_epoch, step, history = self._load_state(state, opt)
            self.log(f"resuming from {state} (epoch {start_epoch} of {r.schedule.epochs})")
        self.resumed_from = start_epoch
        import sys

        from tqdm import tqdm

        show = self.opts.show_progress
        bar = tqdm(total=total, initial=step, desc=f"train {r.mode}", unit="step", leave=False,
                   disable=(not sys.stderr.isatty()) if show is None else not show)
        last = r.schedule.epochs if self.opts.max_epochs is None else min(r.schedule.epochs, self.opts.max_epochs)
        if self.recipe.mode == "full":
            self.model.train()
            self.model.backbone.eval()
        for epoch in range(start_epoch, last):
            order = torch.from_numpy(np.random.default_rng([r.seed, epoch]).permutation(n)).to(self.device)
            sums = {"loss": 0.0, "global": 0.0, "fused": 0.0, "pixel": 0.0}
            t0 = time.perf_counter()
            for b in range(per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                factor = lr_factor(step, total, warmup, r.optimizer.min_lr_ratio)
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * factor
                global_logit, map_logit, score = self._forward(idx)
                parts = losses(r, global_logit, map_logit, score, self.labels[idx], self.pos[idx], self.neg[idx])
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                opt.step()
                step += 1
                for key, value in parts.items():
                    sums[key] += float(value.detach()) * len(idx) / n
                rate = (b + 1) * bs / max(time.perf_counter() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{float(parts['loss'].detach()):.4f}", img_s=f"{rate:.0f}")
            history.append({"epoch": epoch + 1, **{k: round(v, 6) for k, v in sums.items()}})
            done = epoch + 1
            if done % r.schedule.checkpoint_every == 0 or done == r.schedule.epochs or done == last:
                path = self._save_state(opt, done, step, history)
                seconds = time.perf_counter() - t0
                line = (f"epoch {done}/{r.schedule.epochs}: loss {sums['loss']:.4f} (global {sums['global']:.4f}, "
                        f"fused {sums['fused']:.4f}, pixel {sums['pixel']:.4f}), {n / max(seconds, 1e-9):.0f} img/s; "
                        f"state {path.name}")
                if bar.disable:
                    self.log(line)
                else:
                    bar.write(line)
        bar.close()
        self.model.eval()
        return step, history, last

    # -- evaluation
    def evaluate(self) -> dict | None:
        if self.eval_samples is None:
            return None
        from edgedeploy.host.train.heldout import per_category_metrics

        samples = self.eval_samples
        per_category = per_category_metrics(self.model, samples, self.recipe.mode, self.cache, self.device, self.size,
                                            self.model_recipe.smooth_sigma, self.opts.show_progress)
        from edgedeploy.evaluation.metrics import mean_over_categories

        if not per_category:
            self._note(f"evaluation on {self.eval_spec.label}: no category has both normal and anomalous images")
            return None
        mean = {k: round(float(v), 4) for k, v in mean_over_categories(per_category).items()}
        return {"bench": self.eval_spec.bench, "categories": list(self.eval_spec.categories),
                "split": self.recipe.evaluate_split, "unseen": self.eval_unseen, "images": len(samples),
                "mean": mean, "per_category": per_category,
                "scorer": "PyTorch FP32 (readout on the cached backbone features)" if self.recipe.mode == "heads"
                else "PyTorch FP32"}

    # -- output
    def checkpoint(self, steps: int, history: list[dict], evaluation: dict | None) -> tuple[dict, dict]:
        r = self.recipe
        heads_only = r.mode == "heads" and self.backbone.kind in ("seeded", "package")
        state = self.model.state_dict()
        tensors = {k: v for k, v in state.items() if k.startswith("readout.")} if heads_only else dict(state)
        model_cfg = asdict(self.model_recipe.model)
        metadata = {
            "summary": summary_line(r, self.source, self.backbone),
            "kind": "heads" if heads_only else "full",
            "model_recipe": {"name": self.model_recipe.name, "config": model_cfg},
            "train_recipe": {"name": r.name, "resolved": r.resolved()},
            "backbone_init": self.backbone.record(),
            "sampling": self.source.summary(),
            "training": {"mode": r.mode, "epochs": r.schedule.epochs, "steps": steps, "device": self.device.type,
                         "threads": r.threads, "final": history[-1] if history else None, "history": history},
            "evaluation": evaluation,
            "tools": {"torch": package_version("torch"), "timm": package_version("timm")},  # no edgedeploy version (see docs)
            "command": self.opts.command,
        }
        return tensors, metadata


def run_training(recipe: TrainRecipe, model_recipe: Recipe, opts: TrainOptions, log: Log = print) -> TrainResult:
    """Train per ``recipe``; write the checkpoint to ``opts.out`` (unless stopped early by ``max_epochs``)."""
    start = time.perf_counter()
    if recipe.sampling.resolution != model_recipe.model.input_size:
        raise TrainError(f"training recipe {recipe.name} samples at resolution {recipe.sampling.resolution} but model "
                         f"recipe {model_recipe.name} takes {model_recipe.model.input_size}x{model_recipe.model.input_size} "
                         "input; make them equal")
    keep_freed_memory()
    run = _Run(recipe, model_recipe, opts, log)
    with deterministic(recipe.threads, run.device):
        run.prepare()
        log(f"training {recipe.mode} ({recipe.schedule.epochs} epochs, batch {recipe.schedule.batch_size}, "
            f"{run.device.type}, {recipe.threads} thread{'s' if recipe.threads > 1 else ''}); states in {run.work_dir}")
        steps, history, last = run.train()
        if last < recipe.schedule.epochs:
            return TrainResult(None, None, 0, {}, run.resumed_from, time.perf_counter() - start, False, run.notes)
        evaluation = run.evaluate()
        tensors, metadata = run.checkpoint(steps, history, evaluation)
    size = save_checkpoint(opts.out, tensors, metadata)
    metadata = json.loads(json.dumps(metadata, sort_keys=True))
    return TrainResult(Path(opts.out), sha256_file(opts.out), size, metadata, run.resumed_from,
                       time.perf_counter() - start, True, run.notes)
