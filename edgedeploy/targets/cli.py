"""``edgedeploy engine build``: the TensorRT engine, built on the Jetson it runs on.

It imports no PyTorch; TensorRT is imported only when used.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgedeploy.remote.options import remote_from_context, remote_options


@click.group()
def engine() -> None:
    """TensorRT engines, built on the device they run on."""


@engine.command("build")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--keep-fp32", "keep_fp32", multiple=True, metavar="NODE_OR_GLOB",
              help="ONNX node name (as `edgedeploy audit` prints it) or glob to keep in FP32; repeatable. "
                   "Default: the nodes kept when the bundle was built.")
@remote_options()  # --remote HOST: build on the Jetson over SSH and copy the engine back (edgedeploy.remote.score)
def engine_build(bundle_dir: Path, keep_fp32: tuple[str, ...]) -> None:
    """Build BUNDLE_DIR/model.engine (TensorRT FP16) here, on the Jetson; needs tensorrt, not PyTorch."""
    if remote_from_context() is not None:
        from edgedeploy.remote.score import engine_build_remote

        engine_build_remote(remote_from_context(), bundle_dir, keep_fp32, click.echo)
        return
    from edgedeploy.runtime.bundle import read_manifest, require_layout, require_runtime, update_manifest
    from edgedeploy.targets.keepfp32 import expand_keep_fp32, layer_patterns, node_names
    from edgedeploy.runtime.engine_check import import_tensorrt
    from edgedeploy.targets.tensorrt.engine import build_engine, check_build_host
    from edgedeploy.runtime.engine_check import current_gpu
    from edgedeploy.targets.tensorrt.trtexec import BuildSettings

    manifest = read_manifest(bundle_dir)
    require_runtime(bundle_dir, manifest, "tensorrt", "`edgedeploy engine build`")
    require_layout(bundle_dir, manifest, "`edgedeploy engine build`")
    if (manifest.get("quantization") or {}).get("precision") == "int8":
        from edgedeploy.core.errors import EdgeDeployError

        raise EdgeDeployError(f"{bundle_dir} holds an INT8 QDQ graph: build its engine with `bash build_engine.sh` on "
                              "the Jetson (trtexec --int8 --fp16); `edgedeploy engine build` builds FP16 engines only")
    settings = BuildSettings.from_target(manifest["target"])
    trt = import_tensorrt(bundle_dir)
    gpu = current_gpu()
    check_build_host(trt, gpu, settings, bundle_dir)
    wanted = keep_fp32 or tuple((manifest.get("compile") or {}).get("keep_fp32", []))
    kept = expand_keep_fp32(bundle_dir / "model.onnx", wanted)
    specs = layer_patterns(kept, node_names(bundle_dir / "model.onnx")) if kept else []
    click.echo(f"TensorRT {trt.__version__} ({Path(trt.__file__).parent}) on {gpu['name']} (compute capability "
               f"{gpu['compute_capability']}): matches the target's TensorRT {settings.tensorrt_version or 'any'}, "
               f"compute capability {settings.compute_capability or 'any'}")
    meta = build_engine(bundle_dir, settings, kept, specs, manifest["target"]["precision"], gpu,
                        log=lambda line: click.echo(line, err=line.startswith("warning")))
    update_manifest(bundle_dir, "compile", {"engine": meta, "status": "engine-built", "keep_fp32": list(kept),
                                            "layer_specs": specs, "engine_bench": None})  # a new engine: bench again
    click.echo(f"engine: {bundle_dir / 'model.engine'} (TensorRT {meta['tensorrt_version']}, compute capability "
               f"{meta['compute_capability']}, {len(meta['settings'].get('fp32_layers', []))} FP32 layers)")
