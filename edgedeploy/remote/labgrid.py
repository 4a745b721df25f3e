"""A labgrid place as a board: acquire it, read its SSH address, release it when the run ends.

labgrid (PyPI ``labgrid``, in the ``[labgrid]`` extra) is the board-farm engine many teams already run: a coordinator,
exporters that export each board's resources, places a user acquires. A place used here must hold a
``NetworkService`` resource (address, username, port): the same one labgrid's own ``SSHDriver`` connects through.
The connection itself then goes through the system ``ssh`` like any other board (host-key checking and the user's
ssh config included).

* acquire and release: ``labgrid-client -x COORDINATOR -p PLACE acquire|release`` (labgrid's own client, run with
  this interpreter), so the coordinator records who holds the place;
* the address: labgrid's ``Environment`` with a ``RemotePlace`` resource, which reads the acquired place's resources
  from the coordinator.

Tested against a coordinator and an exporter started on 127.0.0.1 (``tests/remote/test_labgrid.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from edgedeploy.core.errors import EdgeDeployError, ToolUnavailableError
from edgedeploy.remote.transport import RemoteError

Log = Callable[[str], None]
CLIENT_TIMEOUT = 60


def _client(coordinator: str, place: str, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", "from labgrid.remote.client import main; main()", "-x", coordinator, "-p", place,
            *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"labgrid: the coordinator {coordinator} did not answer `{' '.join(args)}` for place "
                          f"{place} within {CLIENT_TIMEOUT}s") from None


def _last(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def acquire_place(place: str, coordinator: str | None, log: Log = print) -> tuple[str, int | None, Callable[[], None]]:
    """Acquire ``place``; return ``user@address``, the port, and the function that releases it."""
    import importlib.util

    if importlib.util.find_spec("labgrid") is None:
        raise ToolUnavailableError("--remote lg:PLACE needs labgrid: pip install 'edgedeploy[labgrid]'")
    coordinator = coordinator or os.environ.get("LG_COORDINATOR")
    if not coordinator:
        raise EdgeDeployError(f"--remote lg:{place}: say where the labgrid coordinator is (--labgrid-coordinator "
                              "HOST:PORT or $LG_COORDINATOR)")
    done = _client(coordinator, place, "acquire")
    if done.returncode != 0:
        raise RemoteError(f"labgrid: cannot acquire place {place} at {coordinator}: {_last(done.stderr + done.stdout)}")
    log(f"labgrid: acquired place {place} at {coordinator}")

    def release() -> None:
        gone = _client(coordinator, place, "release")
        if gone.returncode != 0:
            log(f"warning: labgrid: could not release place {place}: {_last(gone.stderr + gone.stdout)}")
        else:
            log(f"labgrid: released place {place}")

    try:
        host, port = _address(place, coordinator)
    except BaseException:
        release()
        raise
    return host, port, release


def _address(place: str, coordinator: str) -> tuple[str, int | None]:
    """The acquired place's NetworkService, read through labgrid's RemotePlace."""
    import yaml

    old = os.environ.get("LG_COORDINATOR")
    os.environ["LG_COORDINATOR"] = coordinator
    try:
        with tempfile.TemporaryDirectory(prefix="edgedeploy-lg-") as tmp:
            config = Path(tmp) / "env.yaml"
            config.write_text(yaml.safe_dump({"targets": {"main": {"resources": {"RemotePlace": {"name": place}}}}}))
            from labgrid import Environment

            try:
                target = Environment(str(config)).get_target("main")
                service = target.get_resource("NetworkService")
            except Exception as exc:  # noqa: BLE001 - labgrid raises its own types
                raise EdgeDeployError(f"labgrid place {place} has no usable NetworkService resource (address, "
                                      f"username, port) to reach it by ssh: {' '.join(str(exc).split())[:200]}") from None
    finally:
        if old is None:
            os.environ.pop("LG_COORDINATOR", None)
        else:
            os.environ["LG_COORDINATOR"] = old
    user = getattr(service, "username", "") or ""
    host = f"{user}@{service.address}" if user else str(service.address)
    port = getattr(service, "port", None)
    return host, int(port) if port else None
