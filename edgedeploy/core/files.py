"""Files written so that an interrupted run never leaves something a later run accepts as finished."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgedeploy.core.errors import EdgeDeployError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/inf: the same structure with those floats written as strings."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def ensure_writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` if needed and prove it is writable, or raise a one-line error naming ``option``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise EdgeDeployError(f"output directory {path} is not writable ({exc.strerror or exc}): choose another "
                              f"{option}") from None
    return path


def ensure_writable_file(path: str | Path, option: str) -> Path:
    """Prove, before any long work, that ``path`` can be written (its folder is made if needed)."""
    path = Path(path)
    if path.is_dir():
        raise EdgeDeployError(f"{option} {path} is a folder: give a file name")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), option)
    return path
