"""capture-plot draws what the run recorded: checked against the runlog, the image and the page."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import orjson
import pytest

from tests.conftest import REPO, drop_fixture_change, read_runlog_dicts, run_cli, start_cli, stop_with, wait_for_line, wait_for_runlog
from pm_arb.commands.plot import GID_BOOK_INCIDENTS, GID_DISCONNECTS, GID_REFRESHES, build_figure
from pm_arb.commands.reports import load_metrics
from pm_arb.events.folds.timeline import timeline
from pm_arb.events.runlog_file import read_runlog
from pm_arb.sim.exchange import SimExchange


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """A 4-shard capture whose connections the server closes twice, with refreshes every second."""
    data = tmp_path_factory.mktemp("plot") / "data"
    with SimExchange(markets=40, rate=400) as sim:
        proc = start_cli(
            "capture", "--gamma-base-url", sim.gamma_url, "--clob-ws-url", sim.ws_url, "--run-id", "faulty",
            "--data-dir", str(data), "--ws-shards", "4", "--ws-reconnect-backoff-initial-seconds", "0.1",
            "--ws-reconnect-backoff-max-seconds", "0.3", "--capture-universe-refresh-interval-seconds", "1",
        )
        run_dir = data / "runs" / "faulty"
        assert wait_for_line(proc) == str(run_dir)
        wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
        sim.close_all_connections()
        wait_for_runlog(run_dir, lambda r: sum(x["type"] == "shard_connected" for x in read_runlog_dicts(run_dir)) >= 8)
        sim.close_all_connections()
        wait_for_runlog(run_dir, lambda r: sum(x["type"] == "shard_connected" for x in read_runlog_dicts(run_dir)) >= 12)
        wait_for_runlog(run_dir, lambda r: r["type"] == "universe_refresh")
        code, _, err = stop_with(proc)
        assert code == 0, err
    return run_dir


def disconnect_windows_in_runlog(run_dir) -> int:
    """Counted from the raw runlog lines, independently of the fold: a shard that was up goes down."""
    up: set[int] = set()
    windows = 0
    for r in read_runlog_dicts(run_dir):
        if r["type"] == "shard_connected":
            up.add(r["shard"])
        elif r["type"] == "shard_disconnected" and r["cause"] != "stop" and r["shard"] in up:
            up.discard(r["shard"])
            windows += 1
    return windows


def test_the_figure_draws_one_span_per_disconnection_and_one_line_per_refresh(faulty_run):
    recs = read_runlog(faulty_run).records
    glob, _, _ = load_metrics(faulty_run)
    fig = build_figure(timeline(recs, glob))
    (spans,) = [c for ax in fig.axes for c in ax.collections if c.get_gid() == GID_DISCONNECTS]
    expected = disconnect_windows_in_runlog(faulty_run)
    assert expected >= 8
    assert len(spans.get_paths()) == expected
    refreshes = [ln for ln in fig.axes[0].lines if (ln.get_gid() or "").startswith(GID_REFRESHES)]
    assert len(refreshes) == sum(r["type"] == "universe_refresh" for r in read_runlog_dicts(faulty_run)) >= 1


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.other_refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        for key in ("href", "src"):
            if key in a and not (a[key] or "").startswith("data:"):
                self.other_refs.append(a[key])


def test_capture_plot_writes_a_png_that_is_not_blank_and_a_page_that_carries_it(faulty_run, tmp_path):
    proc = run_cli("capture-plot", "--run-dir", str(faulty_run), "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert doc["drawn"]["disconnect_spans"] == disconnect_windows_in_runlog(faulty_run)
    png = (tmp_path / "run_plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib import image

    pixels = image.imread(str(tmp_path / "run_plot.png"))[..., :3]
    height, width, _ = pixels.shape
    assert (width, height) == (1200, 1300)
    non_white = (pixels.min(axis=2) < 0.95).mean()
    assert 0.02 < non_white < 0.9, non_white
    # the unplanned-disconnect red (tab:red, #d62728) is on the page
    red = ((abs(pixels[..., 0] - 0.839) < 0.02) & (abs(pixels[..., 1] - 0.153) < 0.02) & (abs(pixels[..., 2] - 0.157) < 0.02))
    assert red.sum() > 200
    page = (tmp_path / "run_plot.html").read_text()
    parser = _Images()
    parser.feed(page)
    (src,) = parser.srcs
    assert src.startswith("data:image/png;base64,") and parser.other_refs == []  # self-contained
    assert base64.b64decode(src.split(",", 1)[1]) == png
    # default output: beside the run, and the text form names both files
    text = run_cli("capture-plot", "--run-dir", str(faulty_run))
    assert text.returncode == 0 and "run_plot.html" in text.stdout and (faulty_run / "run_plot.png").is_file()


def _drawn_book_bands(run_dir, incidents):
    """The figure's book-incident bands for `incidents` (capture-books' own list), as (shard row y, x start)."""
    glob, _, _ = load_metrics(run_dir)
    tl = timeline(read_runlog(run_dir).records, glob, book_incidents=incidents)
    fig = build_figure(tl)
    (bands,) = [c for ax in fig.axes for c in ax.collections if c.get_gid() == GID_BOOK_INCIDENTS]
    return tl, [((p.vertices[:, 1].min() + p.vertices[:, 1].max()) / 2, p.vertices[:, 0].min()) for p in bands.get_paths()]


def test_a_lost_change_is_drawn_as_exactly_the_incidents_capture_books_reports_and_a_clean_run_draws_none(offline_run, tmp_path):
    clean = orjson.loads(run_cli("capture-plot", "--run-dir", str(offline_run), "--out", str(tmp_path / "clean"), "--json").stdout)
    assert clean["drawn"]["book_incidents"] == 0 and clean["book_incidents"] == []
    assert _drawn_book_bands(offline_run, orjson.loads(run_cli("capture-books", "--run-dir", str(offline_run), "--json").stdout)["incidents"])[1] == []

    tok = drop_fixture_change(REPO / "fixtures" / "default", tmp_path / "fx")
    cap = run_cli("capture", "--offline", "--fixtures", str(tmp_path / "fx"), "--offline-speed", "0", "--ws-shards", "4",
                  "--run-id", "lossy", "--data-dir", str(tmp_path / "data"))
    assert cap.returncode == 0, cap.stderr
    run_dir = tmp_path / "data" / "runs" / "lossy"
    books = orjson.loads(run_cli("capture-books", "--run-dir", str(run_dir), "--json").stdout)
    assert books["verdict"] == "FAIL" and {i["token"] for i in books["incidents"]} == {tok}
    proc = run_cli("capture-plot", "--run-dir", str(run_dir), "--out", str(tmp_path / "lossy"), "--json")
    assert proc.returncode == 0, proc.stderr
    plotted = orjson.loads(proc.stdout)
    assert plotted["drawn"]["book_incidents"] == len(books["incidents"]) >= 1
    assert [(i["token"], i["cause"], i["shard"], i["start_mono_ns"], i["end_mono_ns"]) for i in plotted["book_incidents"]] == [
        (i["token"], i["cause"], i["start"]["shard"], i["start"]["mono_ns"], i["end"] and i["end"]["mono_ns"]) for i in books["incidents"]]
    # in the figure: one band per incident, on its shard's row, starting where the audit says
    tl, bands = _drawn_book_bands(run_dir, books["incidents"])
    t0 = read_runlog(run_dir).records[0].mono_ns
    expected = [(tl.shards.index(i["start"]["shard"]), (i["start"]["mono_ns"] - t0) / 1e9) for i in books["incidents"]]
    assert [(round(y, 6), round(x, 6)) for y, x in bands] == [(y, round(x, 6)) for y, x in expected]
    page = (tmp_path / "lossy" / "run_plot.html").read_text()
    assert "Book incidents (capture-books)" in page and tok in page and f"book incidents: {len(books['incidents'])}" in page
    skipped = orjson.loads(run_cli("capture-plot", "--run-dir", str(run_dir), "--out", str(tmp_path / "skip"), "--no-books", "--json").stdout)
    assert skipped["drawn"]["book_incidents"] is None and skipped["book_incidents"] is None
    assert tok not in (tmp_path / "skip" / "run_plot.html").read_text()
