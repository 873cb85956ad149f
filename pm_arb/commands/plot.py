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
GID_BOOK_INCIDENTS = "book_incidents"
BOOK_COLOR = "tab:purple"
HTML_MAX_INCIDENTS = 200


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
    # the loss audit's incidents: a thin band inside the row of the shard each started on, and a
    # marker at its start (a band of a short incident is narrower than a pixel)
    book = tl.book_incidents or []
    min_w = max(tl.end_s, 1e-3) / 2000
    book_verts = [
        [(b.start_s, rows[b.shard] - 0.15), (max(b.end_s, b.start_s + min_w), rows[b.shard] - 0.15),
         (max(b.end_s, b.start_s + min_w), rows[b.shard] + 0.15), (b.start_s, rows[b.shard] + 0.15)]
        for b in book
    ]
    bands = PolyCollection(book_verts, facecolors=BOOK_COLOR, edgecolors="none")
    bands.set_gid(GID_BOOK_INCIDENTS)
    ax_shards.add_collection(bands)
    if book:
        ax_shards.plot([b.start_s for b in book], [rows[b.shard] for b in book], ls="none", marker="v", ms=6, color=BOOK_COLOR)
    ax_shards.set_yticks(range(len(tl.shards)), [f"shard {s:02d}" for s in tl.shards], fontsize=8)
    ax_shards.set_ylim(-0.6, max(len(tl.shards), 1) - 0.4)
    ax_shards.set_ylabel("disconnected\n(red; orange planned)\nbook incidents\n(purple)" if tl.book_incidents is not None
                         else "disconnected\n(red; orange planned)")

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
        f"{len(tl.refreshes)} refreshes (dashed), "
        + (f"{len(tl.book_incidents)} book incidents" if tl.book_incidents is not None else "book audit not run (--no-books)"),
        fontsize=10,
    )
    return fig


def render_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _incident_table(incidents: list[dict[str, Any]]) -> str:
    """The loss audit's incidents under the image: what the purple bands are, token by token."""
    if not incidents:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("cause", "token", "shard", "start s", "end s", "detail"))
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            i["cause"], i["token"], i["shard"], f"{i['start_s']:.3f}",
            "open at the end" if i["end_s"] is None else f"{i['end_s']:.3f}", i["detail"])) + "</tr>"
        for i in incidents[:HTML_MAX_INCIDENTS]
    )
    more = f"<p>... {len(incidents) - HTML_MAX_INCIDENTS} more (capture-books --json)</p>\n" if len(incidents) > HTML_MAX_INCIDENTS else ""
    return f"<h2>Book incidents (capture-books)</h2>\n<table border=\"1\" cellpadding=\"3\"><tr>{head}</tr>{rows}</table>\n{more}"


def html_page(title: str, png: bytes, facts: list[str], incidents: list[dict[str, Any]] | None = None) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    items = "".join(f"<li>{html.escape(f)}</li>" for f in facts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head>\n<body style=\"font-family: sans-serif\">\n"
        f"<h1>{html.escape(title)}</h1>\n<ul>{items}</ul>\n"
        f"<img alt=\"{html.escape(title)}\" style=\"max-width: 100%\" src=\"data:image/png;base64,{b64}\">\n"
        f"{_incident_table(incidents or [])}"
        "</body></html>\n"
    )


def _book_audit(run_dir: Path, skip_bad_lines: bool, show_progress: bool | None, warnings: list[str]) -> dict[str, Any] | None:
    from pm_arb.commands.books import run_books
    from pm_arb.errors import UserError

    try:
        return run_books(run_dir, skip_bad_lines=skip_bad_lines, show_progress=show_progress)
    except UserError as exc:
        warnings.append(f"book incidents not drawn: {exc}")
        return None


def plot_run(run_dir: Path, out_dir: Path | None, skip_bad_lines: bool, gap_threshold_s: float = 2.0,
             books: bool = True, show_progress: bool | None = None) -> dict[str, Any]:
    read, warnings = load_runlog(run_dir, skip_bad_lines)
    glob, _shards, bad = load_metrics(run_dir)
    if bad:
        warnings.append(f"metrics: {bad} unreadable line(s) skipped")
    audit = _book_audit(run_dir, skip_bad_lines, show_progress, warnings) if books else None
    tl = timeline(read.records, glob, gap_threshold_s, audit["incidents"] if audit is not None else None)
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
        "book_incidents": None if tl.book_incidents is None else len(tl.book_incidents),
    }
    incidents = None if tl.book_incidents is None else [
        {"token": b.token, "cause": b.cause, "shard": b.shard,
         "start_mono_ns": i["start"]["mono_ns"], "end_mono_ns": i["end"]["mono_ns"] if b.closed else None,
         "start_s": round(b.start_s, 6), "end_s": round(b.end_s, 6) if b.closed else None, "detail": i["detail"]}
        for b, i in zip(tl.book_incidents, audit["incidents"])  # type: ignore[index]
    ]
    facts = [f"{k.replace('_', ' ')}: {'not drawn (--no-books, or no frames)' if v is None else v}" for k, v in drawn.items()]
    facts += [f"warning: {w}" for w in warnings]
    (out_dir / PNG_NAME).write_bytes(png)
    title = f"pm_arb run {tl.run_id or run_dir.name}"
    (out_dir / HTML_NAME).write_text(html_page(title, png, facts, incidents))
    return {
        "run_dir": str(run_dir),
        "png": str(out_dir / PNG_NAME),
        "html": str(out_dir / HTML_NAME),
        "png_bytes": len(png),
        "drawn": drawn,
        "book_incidents": incidents,
        "warnings": warnings,
    }


def render_plot(r: dict[str, Any]) -> str:
    d = r["drawn"]
    lines = [f"warning: {w}" for w in r["warnings"]]
    lines.append(
        f"drew {d['metrics_intervals']} metrics intervals, {d['disconnect_spans']} disconnected windows "
        f"({d['disconnect_spans_unplanned']} unplanned), {d['heartbeat_gaps_over_threshold']} heartbeat gaps over threshold, "
        f"{d['refreshes']} refreshes, "
        + ("book incidents not drawn" if d["book_incidents"] is None else f"{d['book_incidents']} book incidents")
    )
    lines.append(f"wrote {r['png']} and {r['html']} (open the .html in a browser: the image is inside it)")
    return "\n".join(lines)
