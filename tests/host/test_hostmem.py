"""edgedeploy.host.hostmem: glibc malloc thresholds, set once per process where glibc is the C library."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from edgedeploy.host import hostmem


def test_applied_once(monkeypatch):
    calls = []
    monkeypatch.setattr(hostmem, "_applied", None)
    monkeypatch.setattr(hostmem, "_set_thresholds", lambda: calls.append(1) or True)
    assert hostmem.keep_freed_memory() and hostmem.keep_freed_memory()
    assert calls == [1]


def test_left_alone_off_glibc(monkeypatch):
    monkeypatch.setattr(hostmem.platform, "libc_ver", lambda: ("", ""))
    assert hostmem._set_thresholds() is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_freed_activations_stay_mapped():
    """After the thresholds, a 64 MB block freed and allocated again is served from the heap: the
    second round trip adds no page faults (with glibc's defaults each one maps fresh pages)."""
    code = textwrap.dedent("""
        import ctypes, resource, sys
        from edgedeploy.host.hostmem import keep_freed_memory
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        if sys.argv[1] == "tuned":
            assert keep_freed_memory()
        size = 64 << 20

        def round_trip():
            p = libc.malloc(size)
            ctypes.memset(p, 1, size)
            libc.free(p)

        round_trip()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        round_trip()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    faults = {}
    for mode in ("stock", "tuned"):
        run = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(run.stdout.strip())
    pages = (64 << 20) // 4096
    assert faults["stock"] > pages // 2 and faults["tuned"] < pages // 20, faults
