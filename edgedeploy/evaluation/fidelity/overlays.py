"""The host's and the device's anomaly maps of the top movers, laid over their images, for ``fidelity.md``.

For the images whose rank moved most (``FidelityReport.top_movers``, real reorderings first), both sides' raw maps
go through ``edgedeploy.runtime.overlay`` (the same post-processing and drawing as ``edgedeploy score --maps`` on
the device) on one fixed colour scale: the decision record's ``map_range`` when this run wrote one, else the same
choice made from this run's host maps (normal median to the anomalous 99.5th percentile). Written to
``REPORT/overlays/<image>-host.png`` and ``-device.png``; ``report.info["overlays"]`` lists them for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

Log = Callable[[str], None]
FOLDER = "overlays"


def _name(rel_path: str) -> str:
    stem = rel_path.rsplit(".", 1)[0] if "." in rel_path.rsplit("/", 1)[-1] else rel_path
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem.replace("/", "__"))


def add_mover_overlays(folder: Path, report, bench, host, device, input_size: int, sigma: float, top: int,
                       log: Log) -> list[Path]:
    """Write the overlays of the report's ``top`` movers and list them in ``report.info["overlays"]``."""
    from edgedeploy.runtime.overlay import scale_from_maps, write_overlay

    movers, title = report.top_movers(top), "top movers"
    if not movers:  # no rank moved: the images whose score moved most, so the report still shows both sides' maps
        movers, title = _largest_differences(bench, host, device, top), "largest score differences (no rank moved)"
    if not movers or not host.maps:
        return []
    paths = {s.rel_path: s.path for s in bench.samples}
    decision = report.info.get("decision") or {}
    scale = tuple(decision["map_range"]) if decision.get("map_range") else None
    source = "the decision record's map_range"
    if scale is None:
        maps = [host.maps.get(s.rel_path) for s in bench.samples]
        if any(m is None for m in maps):
            return []
        scale = scale_from_maps(maps, [s.label for s in bench.samples], input_size, sigma)
        source = "this run's host maps: normal median to anomalous 99.5th percentile"
    if scale is None:
        return []
    written, entries = [], []
    for m in movers:
        entry = {"path": m.path, "category": m.category, "label": m.label, "host_rank": m.host_rank,
                 "device_rank": m.device_rank, "host_score": m.host_score, "device_score": m.device_score,
                 "reorderings": m.reorderings}
        for side, scored, score in (("host", host, m.host_score), ("device", device, m.device_score)):
            amap = scored.maps.get(m.path) if scored.maps else None
            if amap is None or m.path not in paths:
                entry[side] = None
                continue
            rel = f"{FOLDER}/{_name(m.path)}-{side}.png"
            written.append(write_overlay(folder / rel, paths[m.path], amap, input_size, sigma, scale,
                                         {"image": m.path, "side": side, "score": repr(score)}))
            entry[side] = rel
        entries.append(entry)
    report.info["overlays"] = {"scale": list(scale), "scale_source": source, "images": entries, "title": title}
    if not device.maps:
        log("note: the device's score file has no maps side file (`edgedeploy score --save-maps`): the report shows "
            "the host's overlays of the top movers only")
    return written


def _largest_differences(bench, host, device, top: int) -> list:
    """Movers (``report.Mover``) of the ``top`` images with the largest finite |device - host| score, ranks in their
    category (rank 1 = most anomalous)."""
    import math

    from edgedeploy.evaluation.fidelity.report import Mover

    h, d = host.table.by_path(), device.table.by_path()
    by_category: dict[str, list] = {}
    for s in bench.samples:
        by_category.setdefault(s.category, []).append(s)
    movers = []
    for samples in by_category.values():
        host_order = sorted(samples, key=lambda s: -h[s.rel_path].score)
        device_order = sorted(samples, key=lambda s: -d[s.rel_path].score)
        host_rank = {s.rel_path: i + 1 for i, s in enumerate(host_order)}
        device_rank = {s.rel_path: i + 1 for i, s in enumerate(device_order)}
        movers += [Mover(s.rel_path, s.category, s.label, h[s.rel_path].score, d[s.rel_path].score,
                         host_rank[s.rel_path], device_rank[s.rel_path]) for s in samples
                   if math.isfinite(d[s.rel_path].score)]
    return sorted(movers, key=lambda m: (-abs(m.device_score - m.host_score), m.path))[:top]


def markdown_lines(info: dict) -> list[str]:
    """fidelity.md's overlays section: host and device side by side per top mover ([] without overlays)."""
    overlays = info.get("overlays")
    if not overlays or not overlays.get("images"):
        return []
    lo, hi = overlays["scale"]
    lines = ["", f"## Anomaly maps of the {overlays.get('title', 'top movers')}, host | device", "",
             f"The map laid over the image at its size, one fixed colour scale for every image and both sides: "
             f"[{lo:.4g}, {hi:.4g}] ({overlays['scale_source']}), dark blue at or below {lo:.4g}, red at or above "
             f"{hi:.4g}.", "", "| image | host | device |", "|---|---|---|"]
    for e in overlays["images"]:
        caption = (f"`{e['path']}` ({'anomalous' if e['label'] else 'normal'}), rank {e['host_rank']:g} -> "
                   f"{e['device_rank']:g}, score {e['host_score']:.5f} -> {e['device_score']:.5f}")
        cells = [f"![{side} {e['path']}]({e[side]})" if e.get(side) else "no map" for side in ("host", "device")]
        lines.append(f"| {caption} | {cells[0]} | {cells[1]} |")
    return lines + [""]
