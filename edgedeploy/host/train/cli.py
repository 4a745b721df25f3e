"""The ``edgedeploy train`` command (torch is imported only when the command runs)."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import click

from edgedeploy.core.errors import TrainError
from edgedeploy.host.train.recipe import DEFAULT_TRAIN_RECIPE

_EPILOG = """\b
Examples:
  edgedeploy train                                    # the built-in default's recipe (demo-default)
  edgedeploy train --source demo:brick --epochs 1 --out brick.safetensors
  edgedeploy build --target jetson-orin-nano --checkpoint brick.safetensors
  edgedeploy train --recipe real-iad-dr --data-root /data/Real-IAD/realiad_512 --backbone-weights tinyvit.pth
"""


@click.command("train", epilog=_EPILOG)
@click.option("--recipe", "recipe_name", default=DEFAULT_TRAIN_RECIPE, show_default=True,
              help="Training recipe: a name in recipes/train/ (demo-default, real-iad-dr) or a YAML path.")
@click.option("--source", help="Source benchmark and categories, BENCH[:CAT,CAT] (e.g. demo:brick,grass); "
              "overrides the recipe's.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Root of the source benchmark "
              "(default $EDGEDEPLOY_DATA_<BENCH>; the demo needs none).")
@click.option("--eval", "eval_spec", help="After training, score this unseen target, BENCH[:CAT,...] "
              "(default: the recipe's), or 'none'.")
@click.option("--eval-data-root", type=click.Path(path_type=Path), help="Root of the evaluation benchmark.")
@click.option("--out", type=click.Path(path_type=Path), help="Checkpoint to write: .safetensors (default) or .pt "
              "[default: <recipe>.safetensors].")
@click.option("--mode", type=click.Choice(["heads", "full"]), help="heads: EdgeGLR only on a frozen backbone "
              "(features cached; fast on a CPU); full: fine-tune everything (a GPU job).")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the recipe's epoch count.")
@click.option("--seed", type=int, help="Override the recipe's seed (sampling, heads, batch order).")
@click.option("--model-recipe", help="Train another model recipe than the training recipe names "
              "(the sampling resolution follows its input size).")
@click.option("--backbone-weights", help="Backbone initialisation: FILE (a timm TinyViT state dict), 'hub' "
              "(timm download), 'seeded' (random, from the model recipe's seed), or 'package' (the model recipe's "
              "pretrained weights from an installed package) [default: the recipe's].")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or cuda:N; auto = cuda for --mode full "
              "when there is one.")
@click.option("--work-dir", type=click.Path(path_type=Path), help="Where training states go "
              "[default: ~/.cache/edgedeploy/train/<run key>]; a rerun of the same command resumes from there.")
@click.option("--feature-cache", type=click.Path(path_type=Path), help="Frozen-backbone feature cache "
              "[default: ~/.cache/edgedeploy/features].")
@click.option("--no-feature-cache", is_flag=True, help="Keep no features on disk.")
@click.option("--resume", type=click.Path(path_type=Path), help="Resume from this training state file.")
@click.option("--restart", is_flag=True, help="Ignore saved training states and start over.")
def train(recipe_name: str, source: str | None, data_root: Path | None, eval_spec: str | None,
          eval_data_root: Path | None, out: Path | None, mode: str | None, epochs: int | None, seed: int | None,
          model_recipe: str | None, backbone_weights: str | None, device: str, work_dir: Path | None,
          feature_cache: Path | None, no_feature_cache: bool, resume: Path | None, restart: bool) -> None:
    """Train EdgeZSAD on a source benchmark per a training recipe, deterministically; evaluate it on an unseen target."""
    from edgedeploy.core.extras import require_host
    from edgedeploy.core.files import ensure_writable_dir
    from edgedeploy.core.model_recipes import DEFAULT_RECIPE, load_recipe

    require_host("edgedeploy train")
    from edgedeploy.host.train.ckptio import SUFFIXES
    from edgedeploy.host.train.recipe import load_train_recipe, parse_bench_spec

    if resume is not None and restart:
        raise TrainError("--resume and --restart contradict each other; pass one")
    recipe = load_train_recipe(recipe_name)
    command = ["edgedeploy", "train", "--recipe", recipe_name]
    changes: dict = {}
    if source:
        changes["source"] = parse_bench_spec(source, "--source")
        command += ["--source", source]
    if mode:
        changes["mode"] = mode
        command += ["--mode", mode]
    if epochs:
        changes["schedule"] = replace(recipe.schedule, epochs=epochs)
        command += ["--epochs", str(epochs)]
    if seed is not None:
        changes["seed"] = seed
        command += ["--seed", str(seed)]
    if eval_spec:
        if eval_spec.strip().lower() == "none":
            changes["evaluate"] = None
        else:
            changes["evaluate"] = parse_bench_spec(eval_spec, "--eval")
            changes["evaluate_split"] = "test"
        command += ["--eval", eval_spec]
    if backbone_weights:
        kind = backbone_weights if backbone_weights in ("seeded", "hub", "package") else "file"
        changes["backbone_init"] = kind
        command += ["--backbone-weights", backbone_weights if kind != "file" else Path(backbone_weights).name]
    if data_root is not None:
        command += ["--data-root", "DATA_ROOT"]
    model = load_recipe(model_recipe or recipe.model_recipe)
    if model_recipe:
        changes["model_recipe"] = model.name
        command += ["--model-recipe", model_recipe]
        if recipe.sampling.resolution != model.model.input_size:
            click.echo(f"note: sampling at {model.model.input_size}x{model.model.input_size}, the input size of "
                       f"{model.name} (the recipe says {recipe.sampling.resolution})")
            changes["sampling"] = replace(recipe.sampling, resolution=model.model.input_size)
    recipe = recipe.replace(**changes)

    out = out or Path(f"{recipe.name}.safetensors")
    if out.suffix not in SUFFIXES:
        raise TrainError(f"--out {out}: the checkpoint must end in {', '.join(SUFFIXES)}")
    if out.is_dir():
        raise TrainError(f"--out {out} is a folder; give a file name such as {out / (recipe.name + '.safetensors')}")
    ensure_writable_dir(out.parent if str(out.parent) else Path("."), "--out")

    from edgedeploy.host.train.loop import TrainOptions, run_training

    opts = TrainOptions(out=out, data_root=data_root, eval_data_root=eval_data_root, work_dir=work_dir,
                        feature_cache=feature_cache, no_feature_cache=no_feature_cache,
                        backbone_weights=backbone_weights, device=device, resume=resume, restart=restart,
                        command=shlex.join(command))
    click.echo(f"training recipe {recipe.name} -> model recipe {model.name} ({model.model.backbone} "
               f"{model.model.input_size}x{model.model.input_size}), mode {recipe.mode}")
    result = run_training(recipe, model, opts, log=lambda line: click.echo(line, err=line.startswith("warning")))
    meta = result.metadata
    click.echo(f"wrote {result.out} ({result.size / 1e6:.2f} MB, sha256 {result.sha256[:16]}) in {result.seconds:.0f}s: "
               f"{meta['summary']}")
    evaluation = meta.get("evaluation")
    if evaluation:
        mean = evaluation["mean"]
        where = f"{evaluation['bench']}:{','.join(evaluation['categories'])}"
        pixel = f", pixel AUROC {mean['pixel_auroc']:.1f}" if "pixel_auroc" in mean else ""
        click.echo(f"{'held-out' if evaluation['unseen'] else 'seen (not zero-shot)'} {where}: image AUROC "
                   f"{mean['image_auroc']:.1f}{pixel} ({evaluation['images']} images, {evaluation['scorer']})")
    hint = "" if model.name == DEFAULT_RECIPE else f" --recipe {model.name}"
    click.echo(f"next: edgedeploy build --target jetson-orin-nano --checkpoint {result.out}{hint}")
