"""Actors driven by scripted messages under a frozen clock. Nothing here sleeps for time to pass:
time moves by ManualClock.advance, and `ask(GetStatus())`/`ask(...)` is the barrier that says an
actor has handled everything told to it before."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pykka
import pytest

from pm_arb.actors import messages as m
from pm_arb.actors.gauge import DepthGauge
from pm_arb.actors.shard import ShardActor
from pm_arb.actors.supervisor import SupervisorActor
from pm_arb.actors.writer import WriterActor
from pm_arb.clock import ManualClock
from pm_arb.commands.verify import verify_run
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.events.folds.supervisor_state import fold
from pm_arb.events.runlog_file import read_runlog
from pm_arb.metrics.latency_hist import bucket_of
from pm_arb.store.frames_format import FLAG_CONTROL
from pm_arb.store.shard_files import ShardReader
from tests.conftest import Probe


@pytest.fixture(autouse=True)
def stop_actors():
    yield
    pykka.ActorRegistry.stop_all()


def cfg(**over) -> Config:
    base = dict(ws_shards=3, capture_confirm_timeout_seconds=10.0, capture_confirm_min_events=2, heartbeat_interval_seconds=1.0,
                ws_connect_stagger_seconds=0.0)
    base.update(over)
    return Config(**base)


def supervisor_with_writer(tmp_path: Path, config: Config, clock: ManualClock):
    done = threading.Event()
    codes = []
    sup = SupervisorActor.start("r1", "offline", config, clock, lambda c: (codes.append(c), done.set()))
    writer = WriterActor.start(tmp_path, config, clock, {s: DepthGauge() for s in range(config.ws_shards)})
    writer.tell(m.AttachWriterPeers(sup, None))
    shards = {s: Probe.start(s, sup) for s in range(config.ws_shards)}
    sup.tell(m.AttachPeers(writer=writer, shards=shards))
    return sup, writer, shards, done, codes


TOKENS = {0: ["a1", "a2"], 1: ["b1", "b2"], 2: []}


def test_supervisor_reaches_running_on_confirm_and_stops_cleanly(tmp_path):
    clock = ManualClock()
    sup, writer, shards, done, codes = supervisor_with_writer(tmp_path, cfg(), clock)
    sup.tell(m.StartRun(TOKENS, markets=2))
    assert sup.ask(m.GetStatus())["phase"] == "confirming"
    assert [type(x) for x in shards[0].ask("got")] == [m.StartShard]
    assert shards[2].ask("got") == []  # a shard without tokens has nothing to confirm
    sup.tell(m.Emit(clock.mono_ns(), clock.wall_ns(), ev.ShardConfirmed(shard=0, market_events=2, seconds_after_start=0.1)))
    assert sup.ask(m.GetStatus())["phase"] == "confirming"
    sup.tell(m.Emit(clock.mono_ns(), clock.wall_ns(), ev.ShardConfirmed(shard=1, market_events=3, seconds_after_start=0.2)))
    assert sup.ask(m.GetStatus())["phase"] == "running"
    clock.advance(20)  # past the confirm deadline: nothing happens once running
    sup.tell(m.Tick(clock.mono_ns()))
    sup.tell(m.RequestStop("SIGINT"))
    assert done.wait(10) and codes == [0]
    recs = read_runlog(tmp_path).records
    types = [r.type for r in recs]
    assert types[:4] == ["run_start", "universe_assigned", "confirm_begin", "heartbeat"]
    assert "run_confirmed" in types and types[-1] == "run_stop"
    assert [r.seq for r in recs] == list(range(len(recs)))
    assert fold(recs).phase == "stopped"
    assert not (tmp_path / "fatal.json").exists()


def test_connections_open_staggered_and_the_confirm_deadline_waits_for_the_last(tmp_path):
    clock = ManualClock()
    sup, writer, shards, done, codes = supervisor_with_writer(tmp_path, cfg(ws_connect_stagger_seconds=0.5), clock)
    t0 = clock.mono_ns()
    sup.tell(m.StartRun({0: ["a1", "a2"], 1: ["b1", "b2"], 2: ["c1", "c2"]}, markets=3))
    sup.ask(m.GetStatus())  # barrier: StartShard has been told to every shard
    starts = [shards[s].ask("got")[0] for s in range(3)]
    assert [x.not_before_mono_ns - t0 for x in starts] == [0, 500_000_000, 1_000_000_000]
    begin = [r.event for r in read_runlog_pending(sup, writer, tmp_path) if isinstance(r.event, ev.ConfirmBegin)][0]
    assert begin.deadline_mono_ns - t0 == 11_000_000_000  # the 10 s timeout, counted from the last opening


def read_runlog_pending(sup, writer, tmp_path):
    sup.ask(m.GetStatus())
    writer.ask(m.FlushMetrics())
    return read_runlog(tmp_path).records


def test_supervisor_goes_fatal_on_confirm_timeout_and_replay_equals_fatal_json(tmp_path):
    clock = ManualClock()
    sup, writer, shards, done, codes = supervisor_with_writer(tmp_path, cfg(), clock)
    sup.tell(m.StartRun(TOKENS, markets=2))
    sup.tell(m.Emit(clock.mono_ns(), clock.wall_ns(), ev.TokensFirstSeen(shard=0, tokens=["a1"])))
    sup.tell(m.Emit(clock.mono_ns(), clock.wall_ns(), ev.ShardConfirmed(shard=0, market_events=5, seconds_after_start=0.1)))
    assert sup.ask(m.GetStatus())["phase"] == "confirming"  # barrier: the deadline is set before time moves
    clock.advance(9.999)
    sup.tell(m.Tick(clock.mono_ns()))
    assert sup.ask(m.GetStatus())["phase"] == "confirming"
    clock.advance(0.001)
    sup.tell(m.Tick(clock.mono_ns()))
    assert done.wait(10) and codes == [1]
    fatal = orjson.loads((tmp_path / "fatal.json").read_bytes())
    assert fatal["reason"] == "confirm_timeout" and "shard(s) 01" in fatal["message"]
    assert "within 10 s of the last connection opening" in fatal["message"]  # the deadline ADR/0007 sets
    missing = orjson.loads((tmp_path / "missing_tokens.json").read_bytes())
    assert missing == {"count": 3, "tokens": [{"token": "a2", "shard": 0}, {"token": "b1", "shard": 1}, {"token": "b2", "shard": 1}]}
    recs = read_runlog(tmp_path).records
    replayed = fold(recs, until_seq=fatal["seq"]).to_dict()
    assert replayed == fatal["state"]
    assert fold(recs).phase == "fatal"


def test_writer_applies_batches_in_order_and_reports_intervals(tmp_path):
    clock = ManualClock()
    config = cfg()
    gauges = {s: DepthGauge() for s in range(3)}
    writer = WriterActor.start(tmp_path, config, clock, gauges)
    metrics = Probe.start()
    writer.ask(m.AttachWriterPeers(Probe.start(), metrics))  # ask: the writer has started before time moves
    sent = {0: [], 1: []}
    batches = []
    for k in range(20):
        shard = k % 2
        batch = [(clock.mono_ns(), clock.wall_ns(), 0, 1, f'{{"k":{k},"i":{i}}}'.encode()) for i in range(5)]
        sent[shard] += [f[4] for f in batch]
        batches.append((shard, batch))
    clock.advance(0.0123)  # every frame is applied 12.3 ms after it was received
    for shard, batch in batches:
        gauges[shard].add(len(batch))
        writer.tell(m.AppendFrames(shard, batch))
    writer.ask(m.Emit(0, 0, None))  # barrier: the writer ignores it, after applying everything before it
    clock.advance(0.9897)
    writer.tell(m.Tick(clock.mono_ns()))
    writer.ask(m.CloseWriter())
    for shard in (0, 1):
        with ShardReader(tmp_path / "capture", shard) as rd:
            recs = list(rd)
        assert [r.payload for r in recs] == sent[shard]
        assert [r.seq for r in recs] == list(range(50))
        assert gauges[shard].depth == 0
    (interval,) = [x for x in metrics.ask("got") if isinstance(x, m.WriterInterval)]
    assert interval.shards[0]["frames"] == 50 and interval.shards[1]["frames"] == 50
    assert interval.interval_s == pytest.approx(1.002)
    assert interval.shards[0]["hist"] == {bucket_of(12_300): 50} and interval.shards[0]["max_us"] == 12_300
    assert verify_run(tmp_path, show_progress=False)["ok"]


class FakeReader:
    """Stands in for a socket reader: the test thread plays the reader thread and feeds `sink`."""

    def __init__(self, shard, tokens, sink, tell, clock):
        self.tokens, self.sink, self.tell = tokens, sink, tell
        self.started = self.stopped = False
        self.token_changes = []

    def start(self, not_before_mono_ns=0):
        self.started = True

    def request_stop(self):
        self.stopped = True
        self.sink.flush()
        self.tell(m.ReaderFinished("stop"))

    def set_tokens(self, tokens, not_before, added, removed):
        self.token_changes.append((tokens, not_before, added, removed))


def start_shard(config, clock, sup, writer, metrics, pg, wg):
    readers = []

    def make_reader(*a):
        readers.append(FakeReader(*a))
        return readers[-1]

    shard = ShardActor.start(0, config, clock, sup, writer, metrics, make_reader, pg, wg)
    return shard, readers


def test_shard_sends_frames_to_the_writer_counts_events_and_relays_reader_facts(tmp_path):
    clock = ManualClock()
    sup, writer, metrics = Probe.start(), Probe.start(), Probe.start()
    pg, wg = DepthGauge(), DepthGauge()
    shard, readers = start_shard(cfg(), clock, sup, writer, metrics, pg, wg)
    shard.ask(m.StartShard(("t1", "t2")))
    sink = readers[0].sink
    book = orjson.dumps([{"event_type": "book", "asset_id": "t1", "market": "0xc"}, {"event_type": "book", "asset_id": "t2", "market": "0xc"}])
    for payload in (book, b"PONG", b"{not json", b"\xff\xfe"):
        sink.frame(1, payload)
    sink.flush()
    shard.tell(m.ReaderEvent(7, 8, ev.ShardReconnect(shard=0, attempt=2, backoff_seconds=0.5, cause="server_close", planned=False)))
    shard.ask(m.Tick(clock.mono_ns()))
    assert sink.want_tokens is False  # both tokens seen: the shard needs no more frames for coverage
    sink.frame(1, book)
    sink.flush()
    shard.ask(m.StopShard())
    assert readers[0].started and readers[0].stopped
    appends = [x for x in writer.ask("got") if isinstance(x, m.AppendFrames)]
    assert [f[4] for a in appends for f in a.frames] == [book, b"PONG", b"{not json", b"\xff\xfe", book]
    assert [f[2] for f in appends[0].frames] == [0, 1, 2, 2]  # flags: market data, control text, truncated JSON is not JSON, not JSON
    assert wg.depth == 5 and pg.depth == 0
    got = sup.ask("got")
    emitted = [x.event for x in got if isinstance(x, m.Emit)]
    assert ev.TokensFirstSeen(shard=0, tokens=["t1", "t2"]) in emitted
    assert any(isinstance(e, ev.ShardConfirmed) and e.market_events == 2 for e in emitted)
    assert ev.ShardReconnect(shard=0, attempt=2, backoff_seconds=0.5, cause="server_close", planned=False) in emitted
    status = [x for x in got if isinstance(x, m.ShardStatus)][-1]
    assert (status.frames, status.market_events, status.control_frames, status.not_json_frames) == (5, 4, 1, 2)
    assert any(isinstance(x, m.ShardStopped) for x in got)


class GatedWriter(WriterActor):
    """A writer that can be held still, to make it slower than its producers on purpose."""

    def on_receive(self, msg):
        if isinstance(msg, threading.Event):
            msg.wait(30)
            return None
        return super().on_receive(msg)


def test_slow_writer_fills_queue_then_drops_are_counted_and_logged_without_corruption(tmp_path):
    clock = ManualClock()
    config = cfg(ws_shards=1, write_q_capacity=100, batch_max_frames=10, write_q_full_wait_ms=0)
    wg, pg = DepthGauge(), DepthGauge()
    writer = GatedWriter.start(tmp_path, config, clock, {0: wg})
    sup = Probe.start()
    writer.tell(m.AttachWriterPeers(sup, None))
    shard, readers = start_shard(config, clock, sup, writer, None, pg, wg)
    shard.ask(m.StartShard(("t1",)))
    gate = threading.Event()
    writer.tell(gate)  # the writer is now stuck behind this message
    depths = []
    sink = readers[0].sink
    for k in range(30):
        for i in range(10):  # the 10th frame fills the batch and hands it off
            sink.frame(1, f'{{"asset_id":"t1","k":{k},"i":{i}}}'.encode())
        depths.append(wg.depth)
        shard.ask(m.Tick(clock.mono_ns()))
    shard.ask(m.StopShard())
    assert depths[:10] == list(range(10, 101, 10)) and depths[10:] == [100] * 20  # rising, then at capacity
    gate.set()
    writer.ask(m.CloseWriter())
    dropped = [x.event for x in sup.ask("got") if isinstance(x, m.Emit) and isinstance(x.event, ev.FramesDropped)]
    assert sum(e.dropped for e in dropped) == 200 and all(e.queue == "write_q" and e.capacity == 100 for e in dropped)
    result = verify_run(tmp_path, show_progress=False)
    assert result["ok"] and result["totals"]["frames"] == 100 and result["totals"]["crc_mismatch"] == 0


def test_full_write_queue_waits_a_bounded_time_for_room_before_dropping(tmp_path):
    """Backpressure: with the writer held for 30 ms and a 2 s bound, nothing is dropped; with the
    writer held longer than the bound, the batch is dropped and counted."""
    clock = ManualClock()
    config = cfg(ws_shards=1, write_q_capacity=10, batch_max_frames=10, write_q_full_wait_ms=2000)
    wg = DepthGauge()
    writer = GatedWriter.start(tmp_path, config, clock, {0: wg})
    writer.tell(m.AttachWriterPeers(Probe.start(), None))
    shard, readers = start_shard(config, clock, Probe.start(), writer, None, DepthGauge(), wg)
    shard.ask(m.StartShard(("t1",)))
    sink = readers[0].sink
    gate = threading.Event()
    writer.tell(gate)
    for i in range(10):
        sink.frame(1, b'{"asset_id":"t1","i":%d}' % i)
    assert wg.depth == 10
    threading.Timer(0.03, gate.set).start()
    for i in range(10):
        sink.frame(1, b'{"asset_id":"t1","j":%d}' % i)  # the writer's queue is full: this hand-off waits
    assert sink.dropped == 0 and sink.full_waits == 1
    short = DepthGauge()
    sink2_config = cfg(ws_shards=1, write_q_capacity=10, batch_max_frames=10, write_q_full_wait_ms=20)
    stuck = threading.Event()
    writer2 = GatedWriter.start(tmp_path / "b", sink2_config, clock, {0: short})
    writer2.tell(stuck)
    shard2, readers2 = start_shard(sink2_config, clock, Probe.start(), writer2, None, DepthGauge(), short)
    shard2.ask(m.StartShard(("t1",)))
    for i in range(20):
        readers2[0].sink.frame(1, b'{"asset_id":"t1","k":%d}' % i)
    assert readers2[0].sink.dropped == 10
    stuck.set()
    writer.ask(m.CloseWriter())
    writer2.ask(m.CloseWriter())
    assert verify_run(tmp_path, show_progress=False)["totals"]["frames"] == 20


def test_empty_initial_dump_and_control_text_do_not_confirm_a_shard():
    """`[]` (a subscription whose tokens have no book yet) and PONG are frames, not market events."""
    from pm_arb.capture.reader_sink import ReaderSink

    told, written = [], []

    class Writer:
        def tell(self, msg):
            written.append(msg)

    clock = ManualClock()
    sink = ReaderSink(0, told.append, Writer(), clock, DepthGauge(), 100, DepthGauge(), 100, 10, 1.0, 1)
    for payload in (b"[]", b"PONG", b" [ ]\n"):
        sink.frame(1, payload)
    sink.flush()
    assert not [x for x in told if isinstance(x, m.ConfirmReached)] and sink.market_events == 0
    assert (sink.received, sink.control_frames, sink.not_json_frames) == (3, 1, 0)
    sink.frame(1, b'{"event_type":"book","asset_id":"t1"}')
    sink.flush()
    assert [x.market_events for x in told if isinstance(x, m.ConfirmReached)] == [1]
    assert [f[4] for w in written for f in w.frames] == [b"[]", b"PONG", b" [ ]\n", b'{"event_type":"book","asset_id":"t1"}']


def test_a_batch_counts_as_received_only_once_it_is_queued_or_dropped():
    """The shard actor reads received, then dropped, then the write gauge, from another thread:
    received must never include a batch that is in neither, or received - dropped - write_q_depth
    would claim frames the writer never got (capture-verify's frames_missing floor)."""
    from pm_arb.capture.reader_sink import ReaderSink

    gauge = DepthGauge()
    seen_at_tell = []

    class Writer:
        def tell(self, msg):
            seen_at_tell.append((sink.received, gauge.depth))

    sink = ReaderSink(0, lambda _msg: None, Writer(), ManualClock(), gauge, 3, DepthGauge(), 100, 100, 1.0, 1)
    for _ in range(2):
        sink.frame(1, b'{"event_type":"book"}')
    sink.flush()
    assert seen_at_tell == [(0, 2)] and sink.received == 2  # in the gauge before it is counted
    for _ in range(2):
        sink.frame(1, b'{"event_type":"book"}')
    sink.flush()  # 2 queued + 2 > capacity 3, no wait allowed: dropped
    assert (sink.received, sink.dropped, gauge.depth) == (4, 2, 2)
    assert sink.received - sink.dropped - gauge.depth == 0  # nothing applied yet, and the floor says so


def test_a_refresh_past_capacity_opens_a_shard_records_why_and_touches_only_changed_shards(tmp_path):
    from dataclasses import dataclass as _dc

    from pm_arb.events.folds.placement import fold as fold_placement
    from pm_arb.universe.placement import PlacementRules, place

    @_dc(frozen=True)
    class Mk:
        condition_id: str
        yes_token: str
        no_token: str

    def markets(ids):
        return [Mk(f"c{i}", f"y{i}", f"n{i}") for i in ids]

    clock = ManualClock()
    config = cfg(ws_shards=2, ws_max_tokens_per_shard=4, capture_universe_refresh_stagger_seconds=0.25)
    rules = PlacementRules.of(config)
    sup = SupervisorActor.start("r1", "online", config, clock, None)
    writer = WriterActor.start(tmp_path, config, clock, {})
    writer.tell(m.AttachWriterPeers(sup, None))
    shards = {s: Probe.start(s, sup) for s in range(2)}
    opened = []

    def open_shard(s):
        opened.append(s)
        shards[s] = Probe.start(s, sup)
        return shards[s]

    sup.tell(m.AttachPeers(writer=writer, shards=dict(shards), open_shard=open_shard))
    start = place(None, markets(range(4)), rules)  # 4 markets, 2 per shard: both full
    sup.tell(m.StartRun(start.placement.shard_tokens(), 4, placement=start))
    for s in range(2):
        sup.tell(m.Emit(clock.mono_ns(), clock.wall_ns(), ev.ShardConfirmed(shard=s, market_events=2, seconds_after_start=0.1)))
    assert sup.ask(m.GetStatus())["phase"] == "running"
    grown = place(start.placement, markets([0, 1, 2, 3, 4]), rules)  # one more market: no room on 0 or 1
    t0 = clock.mono_ns()
    sup.tell(m.ApplyRefresh(grown.placement.shard_tokens(), grown.changed_shards(), ["y4", "n4"], 5, placement=grown))
    status = sup.ask(m.GetStatus())
    assert opened == [2] and status["shards_open"] == 3 and status["balance"]["busiest_tokens"] == 4
    got = shards[2].ask("got")
    assert [type(x) for x in got] == [m.SetTokens] and got[0].tokens == ("n4", "y4") and got[0].not_before_mono_ns == t0
    assert all(not isinstance(x, m.SetTokens) for s in (0, 1) for x in shards[s].ask("got"))  # full shards untouched
    writer.ask(m.FlushMetrics())
    recs = read_runlog(tmp_path).records
    kinds = [r.type for r in recs]
    assert kinds.index("shards_planned") < kinds.index("market_assigned") < kinds.index("universe_assigned")
    opened_ev = [r.event for r in recs if isinstance(r.event, ev.ShardOpened)]
    assert [(e.shard, e.shards, e.cap_tokens) for e in opened_ev] == [(2, 3, 4)] and "10 tokens need 3 connections" in opened_ev[0].reason
    assert fold_placement(recs).placement == grown.placement  # the runlog rebuilds the live placement
    assert fold(recs).shards[2].tokens == ["n4", "y4"]


def refresh_fetch_times(fetch_seconds, ticks: int, handled_late_s: float) -> list[float]:
    """Drive a UniverseActor (2 s refresh interval) with `ticks` ticks on the ticker's own 1 s
    grid, each handled `handled_late_s` late; the n-th Gamma read (0: the load) takes
    `fetch_seconds(n)` of the clock. Returns when each read started, in s from the start."""
    from pm_arb.actors.universe import UniverseActor

    clock = ManualClock()
    start = clock.mono_ns()
    started: list[float] = []
    rows = [{"conditionId": "c1", "clobTokenIds": '["y1","n1"]', "outcomes": '["Yes","No"]', "active": True,
             "closed": False, "enableOrderBook": True, "acceptingOrders": True, "question": "q", "slug": "s"}]

    class Supervisor:
        def tell(self, msg):
            pass

    def fetch(_deadline):
        started.append(round((clock.mono_ns() - start) / 1e9, 3))
        clock.advance(fetch_seconds(len(started) - 1))
        return rows, 1

    actor = UniverseActor.start(cfg(capture_universe_refresh_interval_seconds=2.0), clock, Supervisor(), fetch, True)
    try:
        assert actor.ask(m.LoadUniverse())["markets"]
        for k in range(1, ticks + 1):
            clock.advance(max(0.0, start / 1e9 + k + handled_late_s - clock.mono_ns() / 1e9))
            actor.ask(m.Tick(start + k * 1_000_000_000))
    finally:
        actor.stop()
    return started


def test_refreshes_keep_their_interval_when_ticks_and_fetches_are_not_on_its_grid():
    """A refresh is due an interval after the previous one was due, not after it finished: with
    a 1 s ticker, scheduling from the end of each fetch made a 2 s interval run every 3 s."""
    # every Gamma read takes 350 ms; 20 s of ticks, each handled 5 ms late
    refreshes = refresh_fetch_times(lambda _n: 0.35, ticks=20, handled_late_s=0.005)[1:]
    gaps = [round(b - a, 3) for a, b in zip(refreshes, refreshes[1:])]
    assert len(refreshes) == 9 and all(g == 2.0 for g in gaps), refreshes  # was 6 refreshes, 3 s apart


def test_after_a_fetch_slower_than_the_interval_the_next_refresh_waits_half_an_interval():
    """A Gamma that hangs up to the refresh timeout (longer than the interval) is not asked again
    back to back: the next refresh is due half an interval after the slow one ended."""
    # the first refresh hangs 5 s, past the 2 s interval
    started = refresh_fetch_times(lambda n: 5.0 if n == 1 else 0.0, ticks=10, handled_late_s=0.0)
    # load at 0; refresh due at 2 hangs until 7; the next waits until 8 (not 7), then every 2 s
    assert started == [0.0, 2.0, 8.0, 10.0], started
