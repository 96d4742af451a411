"""The live memory bar at the top of every page: device, used/total, each model's share, other processes.

Pure rendering: a MemorySnapshot and the manager's records in, HTML out. No gradio, no torch.
"""

from __future__ import annotations

import html
import zlib
from dataclasses import dataclass

from studio.memory.probes import MemorySnapshot
from studio.models.records import LOADED, ModelRecord
from studio.text import fmt_bytes

COLORS = ("#6366f1", "#f59e0b", "#10b981", "#ec4899", "#0ea5e9", "#a855f7", "#84cc16", "#f97316")
OTHER_COLOR = "#9ca3af"
RESERVED_COLOR = "#ef4444"


def color_for(key: str) -> str:
    """A model's colour, the same in every view and whatever else is loaded: from a hash of its key."""
    return COLORS[zlib.crc32(key.encode("utf-8")) % len(COLORS)]


@dataclass(frozen=True)
class BarSegment:
    label: str
    nbytes: int
    color: str


def segments(
    snap: MemorySnapshot, records: list[ModelRecord], reservations: list[tuple[str, int]]
) -> list[BarSegment]:
    """What the bar is made of: each loaded model, each external reservation, then other processes."""
    out = []
    loaded = [r for r in records if r.state == LOADED]
    for rec in loaded:
        out.append(BarSegment(rec.name, rec.accounted_bytes, color_for(rec.key)))
    for owner, nbytes in reservations:
        out.append(BarSegment(owner, nbytes, RESERVED_COLOR))
    if snap.device_kind == "cuda" and snap.other_processes:
        out.append(BarSegment("other processes", snap.other_processes, OTHER_COLOR))
    return out


def device_title(snap: MemorySnapshot) -> str:
    """'NVIDIA GeForce RTX 4070 Ti — 12.0 GB' or 'CPU (host RAM) — 23.4 GB'."""
    return f"{snap.device_name} — {fmt_bytes(snap.total)}"


def render(
    snap: MemorySnapshot,
    records: list[ModelRecord],
    *,
    budget: int,
    accounted: int,
    reservations: list[tuple[str, int]] = (),
) -> str:
    """The bar as HTML; data-* attributes carry the raw figures for scripts and tests."""
    total = max(1, snap.total)
    parts = []
    segs = segments(snap, records, list(reservations))
    for seg in segs:
        width = max(0.4, 100.0 * seg.nbytes / total)
        parts.append(
            f'<div class="mb-seg" style="width:{width:.2f}%;background:{seg.color}" '
            f'title="{html.escape(seg.label)}: {fmt_bytes(seg.nbytes)}"></div>'
        )
    used_pct = 100.0 * snap.used / total
    budget_pct = min(100.0, 100.0 * budget / total) if budget else 0
    legend = (
        "".join(
            f'<span class="mb-key"><i style="background:{s.color}"></i>{html.escape(s.label)} '
            f"<b>{fmt_bytes(s.nbytes)}</b></span>"
            for s in segs
        )
        or '<span class="mb-key mb-none">no model loaded</span>'
    )
    extra = []
    if snap.utilization is not None:
        extra.append(f"GPU {snap.utilization}%")
    if snap.temperature is not None:
        extra.append(f"{snap.temperature} °C")
    if snap.torch_reserved is not None:
        extra.append(f"torch reserved {fmt_bytes(snap.torch_reserved)}")
    if snap.device_kind == "cpu":
        extra.append(f"studio process {fmt_bytes(snap.host_rss)}")
    stats = " · ".join(extra)
    return (
        f'<div class="mem-bar" data-used="{snap.used}" data-total="{snap.total}" data-accounted="{accounted}" '
        f'data-budget="{budget}" data-time="{snap.time:.3f}" data-device="{snap.device_kind}">'
        f'<div class="mb-head"><span class="mb-device">{html.escape(device_title(snap))}</span>'
        f'<span class="mb-used">used <b>{fmt_bytes(snap.used)}</b> / {fmt_bytes(snap.total)} '
        f"({used_pct:.0f}%)</span>"
        f'<span class="mb-models">models <b>{fmt_bytes(accounted)}</b> of budget {fmt_bytes(budget)}</span>'
        f'<span class="mb-stats">{html.escape(stats)}</span></div>'
        f'<div class="mb-track"><div class="mb-used-fill" style="width:{used_pct:.2f}%"></div>'
        f'<div class="mb-segs">{"".join(parts)}</div>'
        f'<div class="mb-budget" style="left:{budget_pct:.2f}%" title="budget {fmt_bytes(budget)}"></div></div>'
        f'<div class="mb-legend">{legend}</div></div>'
    )


CSS = """
.mem-bar {font-size: 13px; padding: 6px 10px; border-radius: 8px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary);}
.mb-head {display: flex; gap: 18px; flex-wrap: wrap; align-items: baseline; margin-bottom: 4px;}
.mb-device {font-weight: 600;}
.mb-stats {color: var(--body-text-color-subdued);}
.mb-track {position: relative; height: 14px; background: var(--background-fill-secondary); border-radius: 4px;
  overflow: hidden;}
.mb-used-fill {position: absolute; top: 0; left: 0; height: 100%; background: rgba(148,163,184,.35);}
.mb-segs {position: absolute; top: 0; left: 0; height: 100%; width: 100%; display: flex;}
.mb-seg {height: 100%; border-right: 1px solid rgba(255,255,255,.6);}
.mb-budget {position: absolute; top: -2px; width: 2px; height: 18px; background: #111827;}
.mb-legend {display: flex; gap: 14px; flex-wrap: wrap; margin-top: 4px;}
.mb-key i {display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px;}
.mb-none {color: var(--body-text-color-subdued);}
"""
