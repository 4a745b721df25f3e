"""Test doubles for the device stacks: the fake ``tensorrt`` / ``qai_hub`` modules and fake CUDA memory."""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np

FAKE_MODULES = Path(__file__).resolve().parent / "fake_modules"

STUB_LIBCUDA = r"""
/* A libcuda.so.1 stand-in with the CUDA driver API calls engine_metadata.py makes. */
#include <string.h>
int cuInit(unsigned int flags) { return 0; }
int cuDeviceGetCount(int *count) { *count = 1; return 0; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return 0; }
int cuDeviceGetAttribute(int *value, int attribute, int device) {
    if (attribute == 75) { *value = %(major)d; return 0; }
    if (attribute == 76) { *value = %(minor)d; return 0; }
    return 1;
}
int cuDeviceGetName(char *name, int len, int device) { strncpy(name, "%(name)s", len); return 0; }
"""


def load_fake(name: str):
    """Import ``fake_modules/<name>.py`` as a module called ``name`` (with a real spec)."""
    spec = importlib.util.spec_from_file_location(name, FAKE_MODULES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    missing = object()
    previous = sys.modules.get(name, missing)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is missing:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
    return module


class FakeCudaMemory:
    """The runner's CUDA memory interface over host arrays shared with the fake TensorRT module."""

    _ids = itertools.count(0x1000, 0x1000)

    def __init__(self, trt):
        self.trt = trt
        self.freed: list[int] = []
        self.closed = False
        self.stream_handle = 7

    def alloc(self, nbytes: int) -> int:
        ptr = next(self._ids)
        self.trt.DEVICE_MEMORY[ptr] = np.zeros(nbytes, dtype=np.uint8)
        return ptr

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self.trt.DEVICE_MEMORY[ptr][...] = np.ascontiguousarray(host).view(np.uint8).reshape(-1)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        host.view(np.uint8).reshape(-1)[...] = self.trt.DEVICE_MEMORY[ptr]

    def synchronize(self) -> None:
        pass

    def free(self, ptr: int) -> None:
        self.freed.append(ptr)

    def close(self) -> None:
        self.closed = True


def compile_stub_libcuda(folder: Path, major: int = 8, minor: int = 7, name: str = "Orin") -> Path | None:
    """Build ``folder/libcuda.so.1`` answering compute capability major.minor; None without a C compiler."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "libcuda_stub.c"
    source.write_text(STUB_LIBCUDA % {"major": major, "minor": minor, "name": name})
    for compiler in ("cc", "gcc", "clang"):
        try:
            subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / "libcuda.so.1"), str(source)],
                           check=True, capture_output=True)
            return folder / "libcuda.so.1"
        except (OSError, subprocess.CalledProcessError):
            continue
    return None


def fake_plan(payload: bytes = b"{}", version: tuple[int, int, int, int] = (10, 3, 0, 30)) -> bytes:
    """Bytes with a TensorRT plan header (tag, serialization version 0, version bytes 24..27)."""
    return (0x74727466).to_bytes(4, "little") + bytes(4) + bytes(16) + bytes(version) + payload


def expected_outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the fake device computes for (N,3,S,S) images: mean score, 16x16-pooled channel-mean map."""
    scores = images.reshape(len(images), -1).mean(axis=1)
    gray = images.mean(axis=1)
    s = images.shape[-1] // 16
    maps = gray.reshape(len(images), s, 16, s, 16).mean(axis=(2, 4))
    return scores, maps

