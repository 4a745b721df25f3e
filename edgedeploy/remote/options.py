"""The ``--remote`` options, declared once for ``fidelity``, ``score`` and ``engine build``.

``@remote_options(...)`` adds the options to a command and takes their values out of the callback's arguments, so a
command's signature does not change: the callback reads them with :func:`remote_from_context` (None without
``--remote``/``--inventory``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click

from edgedeploy.core.errors import EdgeDeployError

_KEY = "edgedeploy.remote"
RUNTIME_CHOICES = ("bundle", "onnxruntime", "tensorrt", "qnn-gpu", "qnn-htp")


@dataclass
class RemoteOptions:
    remote: str | None = None          # HOST, or a,b,c (a fleet), names from --inventory, lg:PLACE (labgrid)
    inventory: Path | None = None
    ssh_config: Path | None = None
    remote_venv: str | None = None
    remote_dir: str | None = None
    remote_clean: bool = False
    connect_timeout: int = 10
    runtime: str | None = None         # fidelity: the runner on the board (default: the bundle's)
    shard: bool = False                # fidelity: split the categories across the boards
    labgrid_coordinator: str | None = None


def remote_options(fleet: bool = False):
    """Add the remote options to a click command; ``fleet``: also ``--runtime``, ``--shard`` and inventories."""

    def decorate(fn):
        names = ["remote", "ssh_config", "remote_venv", "remote_dir", "remote_clean", "connect_timeout",
                 "inventory", "labgrid_coordinator"] + (["remote_runtime", "shard"] if fleet else [])

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name, None) for name in names}
            ctx = click.get_current_context()
            ctx.meta[_KEY] = _collect(values, fleet)
            return fn(*args, **kwargs)

        options = [
            click.option("--remote", "remote", metavar="HOST[,HOST...]",
                         help="Run the device side on a board over SSH (the system OpenSSH client, BatchMode): HOST is "
                         "anything ssh takes (user@jetson, an alias from ~/.ssh/config)" +
                         (", a,b,c for a fleet in parallel, names from --inventory, or lg:PLACE for a labgrid place"
                          if fleet else "") + " (docs/remote.md)."),
            click.option("--ssh-config", "ssh_config", type=click.Path(path_type=Path),
                         help="--remote: pass -F FILE to every ssh call (a config of your own, for CI or a fleet)."),
            click.option("--remote-venv", "remote_venv", metavar="PATH",
                         help="--remote: the board's virtual environment holding edgedeploy (e.g. ~/edgedeploy-venv); "
                         "default: edgedeploy on the PATH of the remote login shell."),
            click.option("--remote-dir", "remote_dir", metavar="DIR",
                         help="--remote: the board folder under which each run gets its own work folder (default "
                         "~/edgedeploy-runs); nothing is written on the board outside it."),
            click.option("--remote-clean", "remote_clean", is_flag=True,
                         help="--remote: remove the run's work folder on the board when done (default: keep it, so a "
                         "re-run copies and scores nothing twice)."),
            click.option("--connect-timeout", "connect_timeout", type=int, default=10, show_default=True,
                         help="--remote: seconds ssh waits for a board before giving up on it (exit 3)."),
            click.option("--inventory", "inventory", type=click.Path(path_type=Path),
                         help="--remote: a YAML inventory of boards (name -> host, port, venv, remote_dir, ssh_config "
                         "or a labgrid place); --remote then picks names from it (default: all)."),
            click.option("--labgrid-coordinator", "labgrid_coordinator", metavar="HOST:PORT",
                         help="--remote lg:PLACE: the labgrid coordinator (default: $LG_COORDINATOR)."),
        ]
        if fleet:
            options += [
                click.option("--runtime", "remote_runtime", type=click.Choice(RUNTIME_CHOICES), default=None,
                             help="--remote: the runner on the board (default `bundle`: TensorRT for a Jetson bundle, "
                             "QNN GPU for an RB5 Gen2 bundle); onnxruntime runs the bundle's graph on the board's CPU "
                             "(any board: it tests the loop, and the report says the board's runtime was not used)."),
                click.option("--shard", "shard", is_flag=True,
                             help="--remote with several boards: split the categories across them (speed) instead of "
                             "running every board on everything (consistency)."),
            ]
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def _collect(values: dict, fleet: bool) -> RemoteOptions | None:
    given = values.get("remote") or values.get("inventory")
    if not given:
        extra = [f"--{k.replace('_', '-')}" for k in ("ssh_config", "remote_venv", "remote_dir", "labgrid_coordinator")
                 if values.get(k)]
        extra += ["--remote-clean"] * bool(values.get("remote_clean")) + ["--shard"] * bool(values.get("shard"))
        if values.get("remote_runtime"):
            extra.append("--runtime")
        if extra:
            raise click.UsageError(f"{', '.join(extra)} appl{'ies' if len(extra) == 1 else 'y'} to --remote only")
        return None
    timeout = values.get("connect_timeout") or 10
    if timeout < 1:
        raise click.UsageError("--connect-timeout must be at least 1 second")
    return RemoteOptions(remote=values.get("remote"), inventory=values.get("inventory"),
                         ssh_config=values.get("ssh_config"), remote_venv=values.get("remote_venv"),
                         remote_dir=values.get("remote_dir"), remote_clean=bool(values.get("remote_clean")),
                         connect_timeout=int(timeout), runtime=values.get("remote_runtime"),
                         shard=bool(values.get("shard")), labgrid_coordinator=values.get("labgrid_coordinator"))


def remote_from_context() -> RemoteOptions | None:
    """The remote options of the running command (None without --remote)."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get(_KEY)


def require_single(boards: list, what: str) -> None:
    if len(boards) != 1:
        raise EdgeDeployError(f"{what} --remote takes one board, got {len(boards)} ({', '.join(b.name for b in boards)})"
                              ": use `edgedeploy fidelity --remote a,b,...` for a fleet")
