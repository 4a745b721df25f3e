"""Engine metadata: the facts that decide where a TensorRT engine can load, kept beside it.

A serialized engine loads only on a GPU of the compute capability and the TensorRT version it was
built with, and neither can be read from the file without deserializing it. So every engine gets a
JSON sidecar ``<engine>.json`` (``model.engine.json``), written atomically after the engine:
TensorRT version, compute capability, GPU name, precision, FP32-kept nodes, and the sha256 of the
engine and of the ONNX it came from.

It also summarises what ``bench_engine.sh`` measured: trtexec's ``--exportTimes`` file, a JSON list
with one record per measured inference (warm-up runs left out), each with ``startEnqMs`` ... ``endD2hMs``,
``h2dMs``, ``computeMs``, ``d2hMs`` and ``latencyMs`` (h2d + compute + d2h; TensorRT 10.3
samples/common/sampleReporting.cpp, ``exportJSONTrace``). The median, p90, p99, mean and images/s of
``latencyMs`` go into ``manifest["compile"]["engine_bench"]``, computed by ``latency.py``.

This file depends on the standard library alone (``tensorrt`` is imported if present, for its
version), because a copy of it travels in the Jetson bundle and runs there after ``trtexec``
(``python3 engine_metadata.py ...``, see ``build_engine.sh`` and ``bench_engine.sh``), where edgedeploy
may not be installed; there it uses the bundle's copy of ``latency.py``. edgedeploy imports the same
functions, so there is one implementation.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import hashlib
import json
import os
import re
import sys
import tempfile

FORMAT = "edgedeploy-engine-metadata/1"
# CUDA driver API attribute ids (cuda.h, CUdevice_attribute)
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
PLAN_FILE_TAG = 0x74727466
PLAN_HEADER_BYTES = 28


def sidecar_path(engine_path: str) -> str:
    return str(engine_path) + ".json"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gpu_info(device: int = 0) -> dict | None:
    """``{"compute_capability": "8.7", "name": ...}`` of CUDA device ``device``, or None without a GPU.

    Asks the CUDA driver (libcuda, present wherever an NVIDIA driver is, Jetson included) through
    ctypes, so neither the CUDA toolkit nor any Python CUDA package is needed.
    """
    driver = None
    for name in DRIVER_LIBRARIES:
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if driver is None or driver.cuInit(0) != 0:
        return None
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device:
        return None
    handle = ctypes.c_int(0)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if (driver.cuDeviceGet(ctypes.byref(handle), device) != 0
            or driver.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle) != 0
            or driver.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle) != 0):
        return None
    name = ctypes.create_string_buffer(256)
    if driver.cuDeviceGetName(name, 256, handle) != 0:
        name.value = b"unknown"
    return {"compute_capability": f"{major.value}.{minor.value}", "name": name.value.decode(errors="replace")}


def tensorrt_version(trtexec_log: str | None = None) -> str | None:
    """The TensorRT version here: the Python package's, else the one trtexec printed in its log."""
    try:
        import tensorrt  # noqa: PLC0415 - optional

        return str(tensorrt.__version__)
    except ImportError:
        pass
    if trtexec_log and os.path.isfile(trtexec_log):
        with open(trtexec_log, errors="replace") as fh:
            match = re.search(r"TensorRT version:\s*(\d+)\.(\d+)\.(\d+)|\[TensorRT v(\d+)\]", fh.read())
        if match and match.group(1):
            return ".".join(match.group(i) for i in (1, 2, 3))
        if match:  # v100300 -> 10.3.0
            code = int(match.group(4))
            return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return None


def plan_version(engine_path: str) -> str | None:
    """TensorRT version stored in a plan file's header, or None when the file is not a TensorRT plan.

    A plan starts with the tag 0x74727466 and a serialization version (0) as little-endian uint32;
    bytes 24..27 hold the major, minor, patch and build of the TensorRT that wrote it (the layout
    trtexec's ``--getPlanVersionOnly`` reads, TensorRT 8.6 and later; samples/common/sampleEngines.cpp).
    """
    with open(engine_path, "rb") as fh:
        head = fh.read(PLAN_HEADER_BYTES)
    if len(head) < PLAN_HEADER_BYTES or int.from_bytes(head[0:4], "little") != PLAN_FILE_TAG:
        return None
    if int.from_bytes(head[4:8], "little") != 0:
        return "unknown"
    return ".".join(str(b) for b in head[24:28])


def major_minor(version: str | None) -> str | None:
    if not version:
        return None
    parts = str(version).split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else str(version)


def describe_engine(engine: str, onnx: str, precision: str, built_by: str, keep_fp32=(), gpu: dict | None = None,
                    trt_version: str | None = None, settings: dict | None = None) -> dict:
    """The sidecar record for a freshly built engine (hashes computed here)."""
    return {
        "format": FORMAT,
        "engine": os.path.basename(engine),
        "engine_sha256": sha256_file(engine),
        "engine_bytes": os.path.getsize(engine),
        "onnx": os.path.basename(onnx),
        "onnx_sha256": sha256_file(onnx),
        "tensorrt_version": trt_version,
        "compute_capability": (gpu or {}).get("compute_capability"),
        "gpu": (gpu or {}).get("name"),
        "precision": precision,
        "keep_fp32": list(keep_fp32),
        "settings": settings or {},
        "built_by": built_by,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json_atomic(path: str, obj) -> None:
    """Write under a temporary name in the same folder, then rename: never a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_manifest(manifest_path: str) -> dict | None:
    if not os.path.isfile(manifest_path):
        return None
    with open(manifest_path) as fh:
        return json.load(fh)


def record_in_manifest(manifest_path: str, metadata: dict) -> None:
    """Put the engine record into ``manifest["compile"]["engine"]`` of the bundle's manifest (an earlier
    benchmark no longer describes it)."""
    manifest = _read_manifest(manifest_path)
    if manifest is None:
        return
    compile_record = manifest.setdefault("compile", {})
    compile_record["engine"] = metadata
    compile_record["status"] = "engine-built"
    compile_record.pop("engine_bench", None)
    write_json_atomic(manifest_path, manifest)


class TimesError(ValueError):
    """A --exportTimes file that is missing or not trtexec's format."""


def _latency_module():
    """The latency statistics: run as the bundle's script, the bundle's copy of latency.py beside it (the same
    edgedeploy version, whatever is installed on the device); imported, edgedeploy's own module."""
    if __name__ == "__main__":
        import latency  # noqa: PLC0415 - sys.path[0] is this script's folder
    else:
        from edgedeploy.runtime import latency  # noqa: PLC0415
    return latency


def read_times(path: str) -> list[float]:
    """The ``latencyMs`` of every inference in a trtexec ``--exportTimes`` file."""
    try:
        with open(path) as fh:
            records = json.load(fh)
    except (OSError, ValueError) as exc:
        raise TimesError(f"{path} is not readable JSON ({type(exc).__name__}): rerun bench_engine.sh") from None
    if not isinstance(records, list) or not records:
        raise TimesError(f"{path} holds no inference records (expected trtexec --exportTimes' JSON list)")
    try:
        return [float(record["latencyMs"]) for record in records]
    except (TypeError, KeyError, ValueError):
        raise TimesError(f"{path}: a record without a numeric latencyMs; is it a trtexec --exportTimes file?") from None


def summarise_times(path: str, engine: str, settings: dict | None = None) -> dict:
    """The manifest's ``engine_bench`` record: latency statistics of trtexec's measured inferences."""
    settings = settings or {}
    summary = _latency_module().latency_summary([ms / 1000.0 for ms in read_times(path)], warmup=0)
    return {**summary, "timed": "trtexec --exportTimes latencyMs: the engine's GPU time per inference "
                                "(--useCudaGraph, --noDataTransfers), trtexec's warm-up left out",
            "warmup_ms": settings.get("warmup_ms"), "duration_s": settings.get("duration_s"),
            "flags": settings.get("flags", []), "engine_sha256": sha256_file(engine), "times_file": os.path.basename(path)}


def bench_lines(bench: dict, manifest: dict) -> list[str]:
    """What bench_engine.sh prints: our figures, and, when the bundle holds the paper's model (recipe
    edgezsad-tinyvit21m-512 at 512x512), the paper's for the device as a labelled reference."""
    latency = _latency_module()
    after = f"after a {bench['warmup_ms']:g} ms warm-up" if bench.get("warmup_ms") is not None else "after trtexec's warm-up"
    lines = [latency.latency_line(bench, bench["timed"], after)]
    if not latency.manifest_is_paper_model(manifest):
        return lines
    target = manifest.get("target") or {}
    reference = latency.reference_line(target.get("reference_latency"), target.get("display_name", "the target"))
    return lines + ([reference] if reference else [])


def record_bench(manifest_path: str, bench: dict) -> dict:
    """Put the benchmark into ``manifest["compile"]["engine_bench"]``; returns the manifest ({} without one)."""
    manifest = _read_manifest(manifest_path)
    if manifest is None:
        return {}
    manifest.setdefault("compile", {})["engine_bench"] = bench
    write_json_atomic(manifest_path, manifest)
    return manifest


def bench_main(args) -> int:
    try:
        bench = summarise_times(args.bench_times, args.engine, json.loads(args.bench_settings))
    except TimesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest = record_bench(args.manifest, bench) if args.manifest else {}
    for line in bench_lines(bench, manifest):
        print(line)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write model.engine.json (engine metadata) after a TensorRT build, "
                                                 "or summarise bench_engine.sh's trtexec times (--bench-times).")
    parser.add_argument("--engine", required=True)
    parser.add_argument("--onnx", help="the ONNX the engine was built from (required unless --bench-times)")
    parser.add_argument("--bench-times", help="trtexec --exportTimes file to summarise into the manifest")
    parser.add_argument("--bench-settings", default="{}", help="JSON object: warmup_ms, duration_s, flags")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--built-by", default="trtexec")
    parser.add_argument("--keep-fp32", default="", help="comma-separated ONNX node names kept in FP32")
    parser.add_argument("--trtexec-log", default=None, help="trtexec output, read for the TensorRT version")
    parser.add_argument("--settings", default="{}", help="JSON object of build settings to record")
    parser.add_argument("--manifest", default=None, help="bundle manifest.json to update")
    args = parser.parse_args(argv)
    if args.bench_times:
        return bench_main(args)
    if not args.onnx:
        parser.error("--onnx is required to describe a build")
    if not os.path.isfile(args.engine):
        print(f"error: {args.engine} was not written: the TensorRT build failed (see its log above)", file=sys.stderr)
        return 1
    gpu = gpu_info()
    if gpu is None:
        print("error: no CUDA GPU visible to read its compute capability: run this on the device that built the engine",
              file=sys.stderr)
        return 1
    version = tensorrt_version(args.trtexec_log)
    if version is None:
        print("error: TensorRT version unknown (no tensorrt Python package, no version in the trtexec log)", file=sys.stderr)
        return 1
    keep = [name for name in args.keep_fp32.split(",") if name]
    metadata = describe_engine(args.engine, args.onnx, args.precision, args.built_by, keep, gpu, version,
                               json.loads(args.settings))
    write_json_atomic(sidecar_path(args.engine), metadata)
    if args.manifest:
        record_in_manifest(args.manifest, metadata)
    print(f"{sidecar_path(args.engine)}: TensorRT {version}, compute capability {gpu['compute_capability']} ({gpu['name']}), "
          f"{args.precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
