"""capture-plot: one picture of a run (PNG) and a self-contained HTML page around it.

matplotlib is imported here only, with the Agg backend (no display, no GUI toolkit): a capture
never pays for it (ADR/0012).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from pm_arb.clock import wall_iso
from pm_arb.commands.reports import load_metrics, load_runlog
from pm_arb.events.folds.timeline import QUEUES, Timeline, timeline

PNG_NAME = "run_plot.png"
HTML_NAME = "run_plot.html"
DPI = 100
# gid of the artists a test reads back: what is drawn, not what was meant to be drawn
GID_DISCONNECTS = "disconnect_spans"
GID_GAPS = "heartbeat_gaps_over"
GID_REFRESHES = "refreshes"


def build_figure(tl: Timeline):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 13), dpi=DPI, layout="constrained")
    axes = fig.subplots(6, 1, sharex=True, height_ratios=[1, 1, 1, 0.7, max(1.0, 0.25 * len(tl.shards)), 0.8])
    ax_rate, ax_lat, ax_q, ax_drop, ax_shards, ax_hb = axes
    iv = tl.intervals
    t = [r["t_s"] for r in iv]

    def series(key: str) -> list[float]:
        return [r[key] if isinstance(r[key], (int, float)) else float("nan") for r in iv]

    ax_rate.plot(t, series("frames_per_s"), color="tab:blue", lw=1)
    ax_rate.set_ylabel("frames/s")
    ax_lat.plot(t, series("p50_ms"), color="tab:green", lw=1, label="p50")
    ax_lat.plot(t, series("p99_ms"), color="tab:red", lw=1, label="p99")
    ax_lat.set_ylabel("ws_rx_to_applied\nms per interval")
    ax_lat.legend(loc="upper right", fontsize=8)
    for q, color in zip(QUEUES, ("tab:purple", "tab:orange", "tab:brown")):
        ax_q.plot(t, series(q), lw=1, color=color, label=q)
    ax_q.set_ylabel("queue depth\nframes")
    ax_q.legend(loc="upper right", fontsize=8)
    ax_drop.bar(t, series("dropped"), width=0.8, color="tab:red")
    ax_drop.set_ylabel("dropped\nper interval")
    ax_drop.set_ylim(bottom=0)

    rows = {s: i for i, s in enumerate(tl.shards)}
    bars = [(sp.start_s, max(sp.end_s - sp.start_s, tl.end_s / 2000 or 0.001)) for sp in tl.disconnects]
    colors = ["tab:orange" if sp.planned else "tab:red" for sp in tl.disconnects]
    # one collection for every window, so what is drawn can be counted back from the figure
    from matplotlib.collections import PolyCollection

    verts = [
        [(x, rows.get(sp.shard, 0) - 0.4), (x + w, rows.get(sp.shard, 0) - 0.4), (x + w, rows.get(sp.shard, 0) + 0.4), (x, rows.get(sp.shard, 0) + 0.4)]
        for sp, (x, w) in zip(tl.disconnects, bars)
    ]
    spans = PolyCollection(verts, facecolors=colors, edgecolors="none")
    spans.set_gid(GID_DISCONNECTS)
    ax_shards.add_collection(spans)
    ax_shards.set_yticks(range(len(tl.shards)), [f"shard {s:02d}" for s in tl.shards], fontsize=8)
    ax_shards.set_ylim(-0.6, max(len(tl.shards), 1) - 0.4)
    ax_shards.set_ylabel("disconnected\n(red; orange planned)")

    hb_t = [h[0] for h in tl.heartbeats]
    ax_hb.plot(hb_t, [h[1] for h in tl.heartbeats], color="tab:gray", lw=1, marker=".", ms=2)
    ax_hb.axhline(tl.gap_threshold_s, color="tab:red", ls=":", lw=1)
    gap_verts = [[(a, 0), (b, 0), (b, 1), (a, 1)] for a, b in tl.gaps_over]
    gaps = PolyCollection(gap_verts, facecolors="tab:red", alpha=0.3, edgecolors="none", transform=ax_hb.get_xaxis_transform())
    gaps.set_gid(GID_GAPS)
    ax_hb.add_collection(gaps)
    ax_hb.set_ylabel(f"heartbeat gap s\n(> {tl.gap_threshold_s:g} s shaded)")
    ax_hb.set_xlabel(f"seconds since the run's first record ({wall_iso(tl.start_wall_ns_utc) or 'unknown start'})")

    for ax in axes:
        for i, (rt, applied) in enumerate(tl.refreshes):
            line = ax.axvline(rt, color="tab:green" if applied else "tab:olive", ls="--", lw=0.8)
            if ax is ax_rate:
                line.set_gid(f"{GID_REFRESHES}:{i}")
        ax.grid(alpha=0.3)
    ax_rate.set_xlim(0, max(tl.end_s, 1e-3))
    n_unplanned = sum(1 for sp in tl.disconnects if not sp.planned)
    fig.suptitle(
        f"run {tl.run_id or '?'}: {len(iv)} metrics intervals, {len(tl.disconnects)} disconnected windows "
        f"({n_unplanned} unplanned), {len(tl.gaps_over)} heartbeat gaps over {tl.gap_threshold_s:g} s, "
        f"{len(tl.refreshes)} refreshes (dashed)",
        fontsize=10,
    )
    return fig


def render_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def html_page(title: str, png: bytes, facts: list[str]) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    items = "".join(f"<li>{html.escape(f)}</li>" for f in facts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head>\n<body style=\"font-family: sans-serif\">\n"
        f"<h1>{html.escape(title)}</h1>\n<ul>{items}</ul>\n"
        f"<img alt=\"{html.escape(title)}\" style=\"max-width: 100%\" src=\"data:image/png;base64,{b64}\">\n"
        "</body></html>\n"
    )


def plot_run(run_dir: Path, out_dir: Path | None, skip_bad_lines: bool, gap_threshold_s: float = 2.0) -> dict[str, Any]:
    read, warnings = load_runlog(run_dir, skip_bad_lines)
    glob, _shards, bad = load_metrics(run_dir)
    if bad:
        warnings.append(f"metrics: {bad} unreadable line(s) skipped")
    tl = timeline(read.records, glob, gap_threshold_s)
    fig = build_figure(tl)
    png = render_png(fig)
    out_dir = run_dir if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = {
        "metrics_intervals": len(tl.intervals),
        "disconnect_spans": len(tl.disconnects),
        "disconnect_spans_unplanned": sum(1 for sp in tl.disconnects if not sp.planned),
        "heartbeat_gaps_over_threshold": len(tl.gaps_over),
        "refreshes": len(tl.refreshes),
    }
    facts = [f"{k.replace('_', ' ')}: {v}" for k, v in drawn.items()] + [f"warning: {w}" for w in warnings]
    (out_dir / PNG_NAME).write_bytes(png)
    title = f"pm_arb run {tl.run_id or run_dir.name}"
    (out_dir / HTML_NAME).write_text(html_page(title, png, facts))
    return {
        "run_dir": str(run_dir),
        "png": str(out_dir / PNG_NAME),
        "html": str(out_dir / HTML_NAME),
        "png_bytes": len(png),
        "drawn": drawn,
        "warnings": warnings,
    }


def render_plot(r: dict[str, Any]) -> str:
    d = r["drawn"]
    lines = [f"warning: {w}" for w in r["warnings"]]
    lines.append(
        f"drew {d['metrics_intervals']} metrics intervals, {d['disconnect_spans']} disconnected windows "
        f"({d['disconnect_spans_unplanned']} unplanned), {d['heartbeat_gaps_over_threshold']} heartbeat gaps over threshold, "
        f"{d['refreshes']} refreshes"
    )
    lines.append(f"wrote {r['png']} and {r['html']} (open the .html in a browser: the image is inside it)")
    return "\n".join(lines)
