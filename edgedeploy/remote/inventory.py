"""Which boards a run uses: ``--remote a,b,c``, an inventory file, labgrid places.

Inventory (``--inventory boards.yaml``)::

    ssh_config: fleet.conf          # optional: -F for every board (relative to this file)
    boards:
      jetson-1:
        host: nvidia@jetson-1       # anything ssh takes
        port: 22                    # optional
        venv: ~/edgedeploy-venv     # optional (else --remote-venv, else edgedeploy on the PATH)
        remote_dir: /data/runs      # optional (else --remote-dir, else ~/edgedeploy-runs)
      rb5-a:
        host: rb5-a
      lab-7:
        labgrid: jetson-place-7     # a labgrid place (its NetworkService gives host, user and port)
        coordinator: 127.0.0.1:20408

``--remote`` then picks names from it (default: every board); a name not in it is an ssh host. ``lg:PLACE`` names a
labgrid place directly (coordinator: ``--labgrid-coordinator`` or ``$LG_COORDINATOR``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.remote.options import RemoteOptions
from edgedeploy.remote.session import DEFAULT_REMOTE_DIR, Board
from edgedeploy.remote.transport import SshTarget

Log = Callable[[str], None]
BOARD_KEYS = {"host", "port", "venv", "remote_dir", "ssh_config", "labgrid", "coordinator"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]*$")


class InventoryError(EdgeDeployError):
    """An inventory file or a --remote list that cannot be used (exit 2)."""


def safe_name(name: str) -> str:
    """A board name as a file or folder name."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)


def load_inventory(path: Path) -> tuple[dict[str, dict], Path | None]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InventoryError(f"--inventory {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"--inventory {path} is not readable YAML ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("boards"), dict) or not data["boards"]:
        raise InventoryError(f"{path}: expected a 'boards:' mapping of board names to settings (docs/remote.md)")
    unknown = set(data) - {"boards", "ssh_config"}
    if unknown:
        raise InventoryError(f"{path}: unknown top-level field(s) {', '.join(sorted(unknown))} (boards, ssh_config)")
    config = None
    if data.get("ssh_config"):
        config = (path.parent / str(data["ssh_config"])).resolve()
    boards: dict[str, dict] = {}
    for name, entry in data["boards"].items():
        name = str(name)
        if not _NAME.match(name):
            raise InventoryError(f"{path}: board name {name!r}: letters, digits and . _ - @ : only")
        if not isinstance(entry, dict):
            raise InventoryError(f"{path}: boards.{name} must be a mapping (host: ..., or labgrid: PLACE)")
        bad = set(entry) - BOARD_KEYS
        if bad:
            raise InventoryError(f"{path}: boards.{name}: unknown field(s) {', '.join(sorted(bad))} "
                                 f"(known: {', '.join(sorted(BOARD_KEYS))})")
        if bool(entry.get("host")) == bool(entry.get("labgrid")):
            raise InventoryError(f"{path}: boards.{name} needs exactly one of host: or labgrid:")
        if entry.get("port") is not None and not isinstance(entry["port"], int):
            raise InventoryError(f"{path}: boards.{name}.port must be a number")
        if entry.get("ssh_config"):
            entry = {**entry, "ssh_config": (path.parent / str(entry["ssh_config"])).resolve()}
        boards[name] = entry
    return boards, config


def split_hosts(value: str) -> list[str]:
    names = [part.strip() for part in value.split(",")]
    if any(not n for n in names):
        raise InventoryError(f"--remote {value!r}: an empty name in the list (a,b,c)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InventoryError(f"--remote names {', '.join(dupes)} twice: list each board once")
    return names


def resolve_boards(opts: RemoteOptions, log: Log = print) -> list[Board]:
    """The boards of this run, in the order given; labgrid places are acquired (``Board.release`` gives them back)."""
    entries, inv_config = load_inventory(opts.inventory) if opts.inventory else ({}, None)
    names = split_hosts(opts.remote) if opts.remote else list(entries)
    boards: list[Board] = []
    try:
        for name in names:
            entry = entries.get(name)
            if name.startswith("lg:"):
                entry = {"labgrid": name[3:]}
            if entry is None:
                boards.append(_board(name, {"host": name}, opts, inv_config))
            elif entry.get("labgrid"):
                from edgedeploy.remote.labgrid import acquire_place

                coordinator = entry.get("coordinator") or opts.labgrid_coordinator
                host, port, release = acquire_place(str(entry["labgrid"]), coordinator, log)
                board = _board(name, {**entry, "host": host, "port": port}, opts, inv_config)
                board.release = release
                boards.append(board)
            else:
                boards.append(_board(name, entry, opts, inv_config))
    except BaseException:
        release_all(boards)
        raise
    return boards


def _board(name: str, entry: dict, opts: RemoteOptions, inv_config: Path | None) -> Board:
    config = entry.get("ssh_config") or opts.ssh_config or inv_config
    target = SshTarget(str(entry["host"]), Path(config) if config else None, opts.connect_timeout,
                       entry.get("port"), name=name)
    return Board(target, entry.get("venv") or opts.remote_venv, entry.get("remote_dir") or opts.remote_dir
                 or DEFAULT_REMOTE_DIR)


def release_all(boards: list[Board]) -> None:
    for board in boards:
        if board.release is not None:
            try:
                board.release()
            finally:
                board.release = None
