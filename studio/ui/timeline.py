"""The memory timeline: device memory over the last minutes, with the manager's events marked. SVG, no deps."""

from __future__ import annotations

import html
import time

from studio.memory.timeline import MemoryEvent, Sample
from studio.text import fmt_bytes

EVENT_COLORS = {
    "load": "#10b981",
    "park": "#0ea5e9",
    "unpark": "#0ea5e9",
    "unload": "#6b7280",
    "evict": "#f59e0b",
    "oom": "#ef4444",
    "leak": "#a855f7",
    "reserve": "#ef4444",
    "release": "#6b7280",
    "error": "#ef4444",
}


def render(
    samples: list[Sample],
    events: list[MemoryEvent],
    *,
    width: int = 900,
    height: int = 220,
    now: float | None = None,
    window_s: float = 300.0,
) -> str:
    """An SVG line chart: used memory (grey area), what models account for (blue), the budget (dashed)."""
    now = now or (samples[-1].time if samples else time.time())
    if samples:  # a fresh studio shows its first minute across the whole width, not squeezed to the right
        window_s = min(window_s, max(60.0, now - samples[0].time))
    t0 = now - window_s
    pts = [s for s in samples if s.time >= t0]
    evs = [e for e in events if e.time >= t0]
    pad_l, pad_r, pad_t, pad_b = 64, 12, 14, 26
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    # scale to what matters: the budget and what is used, with headroom, never beyond the device
    top = max([max(s.used, s.budget, s.accounted) for s in pts] + [1]) * 1.15
    top = min(top, max([s.total for s in pts] + [top]))

    def x(t: float) -> float:
        return pad_l + w * (t - t0) / window_s

    def y(v: float) -> float:
        return pad_t + h * (1 - v / top)

    out = [
        f'<svg class="mem-timeline" viewBox="0 0 {width} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg" data-samples="{len(pts)}" data-events="{len(evs)}">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#d1d5db"/>',
    ]
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        yy = y(top * frac)
        out.append(
            f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eef0f3"/>'
            f'<text x="{pad_l - 6}" y="{yy + 4:.1f}" font-size="10" text-anchor="end" fill="#6b7280">'
            f"{fmt_bytes(top * frac)}</text>"
        )
    step = 60 if window_s > 120 else 15
    for k in range(0, int(window_s // step) + 1):
        xx = x(now - k * step)
        label = "now" if k == 0 else (f"-{k * step // 60} min" if step == 60 else f"-{k * step} s")
        out.append(
            f'<text x="{xx:.1f}" y="{height - 8}" font-size="10" text-anchor="middle" fill="#6b7280">{label}</text>'
        )
    if len(pts) >= 2:
        used = " ".join(f"{x(s.time):.1f},{y(s.used):.1f}" for s in pts)
        area = f"{x(pts[0].time):.1f},{y(0):.1f} {used} {x(pts[-1].time):.1f},{y(0):.1f}"
        out.append(f'<polygon points="{area}" fill="rgba(148,163,184,.35)" stroke="none"/>')
        out.append(f'<polyline points="{used}" fill="none" stroke="#64748b" stroke-width="1.5"/>')
        acc = " ".join(f"{x(s.time):.1f},{y(s.accounted):.1f}" for s in pts)
        out.append(f'<polyline points="{acc}" fill="none" stroke="#6366f1" stroke-width="2"/>')
        bud = " ".join(f"{x(s.time):.1f},{y(s.budget):.1f}" for s in pts if s.budget)
        if bud:
            out.append(f'<polyline points="{bud}" fill="none" stroke="#111827" stroke-dasharray="4 3"/>')
    for e in evs:
        xx = x(e.time)
        color = EVENT_COLORS.get(e.kind, "#111827")
        label = html.escape(f"{time.strftime('%H:%M:%S', time.localtime(e.time))} {e.kind}: {e.detail or e.model}")
        out.append(
            f'<g class="ev ev-{e.kind}"><title>{label}</title>'
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{pad_t}" y2="{pad_t + h}" stroke="{color}" '
            f'stroke-width="1.5" stroke-dasharray="2 2"/>'
            f'<circle cx="{xx:.1f}" cy="{pad_t + 6}" r="4" fill="{color}"/></g>'
        )
    legend = [("used (all processes)", "#64748b"), ("models (accounted)", "#6366f1"), ("budget", "#111827")]
    lx = pad_l + 8
    for text, color in legend:
        out.append(
            f'<rect x="{lx}" y="{pad_t + 4}" width="10" height="3" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{pad_t + 9}" font-size="10" fill="#374151">{text}</text>'
        )
        lx += 14 + 6 * len(text) + 16
    out.append("</svg>")
    return "".join(out)


def event_rows(events: list[MemoryEvent], n: int = 12) -> list[list[str]]:
    """The newest events as table rows: time, event, model, size, detail."""
    rows = []
    for e in reversed(events[-n:]):
        rows.append(
            [
                time.strftime("%H:%M:%S", time.localtime(e.time)),
                e.kind,
                e.model,
                fmt_bytes(e.bytes) if e.bytes else "",
                e.detail,
            ]
        )
    return rows
