"""A crash in any actor ends the run as fatal `actor_crash`; an unknown message is a recorded error.

Real actors (supervisor, writer, metrics, universe, shards) under a ManualClock; the shards' socket
readers are the test's FakeReader (the test thread plays the reader). Nothing sleeps: `ask` is the
barrier and the supervisor's `on_done` says the run ended.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import orjson
import pykka
import pytest

from pm_arb.actors import messages as m
from pm_arb.actors.gauge import DepthGauge
from pm_arb.actors.metrics import MetricsActor
from pm_arb.actors.shard import ShardActor
from pm_arb.actors.supervisor import SupervisorActor
from pm_arb.actors.universe import UniverseActor
from pm_arb.actors.writer import WriterActor
from pm_arb.clock import ManualClock
from pm_arb.commands.verify import verify_run
from pm_arb.events import types as ev
from pm_arb.events.folds.supervisor_state import fold
from pm_arb.events.runlog_file import read_runlog
from tests.conftest import read_runlog_dicts, run_cli
from tests.test_actors import TOKENS, FakeReader, cfg


@pytest.fixture(autouse=True)
def stop_actors():
    yield
    pykka.ActorRegistry.stop_all()


@dataclass
class Plant:
    sup: object
    writer: object
    metrics: object
    universe: object
    shards: dict
    readers: dict
    done: threading.Event
    codes: list
    clock: ManualClock

    def tick(self) -> None:
        t = m.Tick(self.clock.mono_ns())
        for ref in [self.sup, self.writer, self.universe, *self.shards.values()]:
            try:
                ref.tell(t)
            except pykka.ActorDeadError:
                pass

    def feed(self, shard: int, n: int) -> None:
        sink = self.readers[shard].sink
        for i in range(n):
            sink.frame(1, orjson.dumps({"event_type": "book", "asset_id": TOKENS[shard][i % 2], "i": i}))
        sink.flush()


def start_plant(tmp_path: Path, writer_cls=WriterActor, metrics_cls=MetricsActor, shard_cls=ShardActor, live=(0, 1)) -> Plant:
    clock = ManualClock()
    config = cfg()
    done, codes = threading.Event(), []
    sup = SupervisorActor.start("r1", "offline", config, clock, lambda c: (codes.append(c), done.set()))
    writer = writer_cls.start(tmp_path, config, clock, {s: DepthGauge() for s in range(config.ws_shards)})
    metrics = metrics_cls.start(writer, config.ws_shards, sup)
    writer.tell(m.AttachWriterPeers(sup, metrics))
    universe = UniverseActor.start(config, clock, sup, lambda _d: ([], 0), False)
    readers: dict[int, FakeReader] = {}

    def make_reader(shard, *rest):
        readers[shard] = FakeReader(shard, *rest)
        return readers[shard]

    shards = {s: shard_cls.start(s, config, clock, sup, writer, metrics, make_reader, DepthGauge(), DepthGauge()) for s in range(config.ws_shards)}
    sup.tell(m.AttachPeers(writer=writer, shards=shards))
    sup.tell(m.StartRun(TOKENS, markets=2))
    sup.ask(m.GetStatus())  # barrier: StartShard is told
    for s in live:
        shards[s].ask(m.ReaderEvent(0, 0, ev.ShardConnected(shard=s, attempt=1, connect_ms=1.0, subscribe_messages=1)))  # barrier: the reader exists
    plant = Plant(sup, writer, metrics, universe, shards, readers, done, codes, clock)
    for s, n in ((0, 6), (1, 4)):
        if s in live:
            plant.feed(s, n)
    return plant


def assert_fatal_actor_crash(run_dir: Path, plant: Plant, actor: str, message_type: str, error: str) -> dict:
    assert plant.done.wait(20) and plant.codes == [1]
    fatal = orjson.loads((run_dir / "fatal.json").read_bytes())
    assert fatal["reason"] == "actor_crash"
    assert fatal["actor"] == actor and fatal["message_type"] == message_type
    assert error in fatal["error"] and "Traceback (most recent call last)" in fatal["traceback"]
    recs = read_runlog(run_dir).records
    types = [r.type for r in recs]
    assert types[-1] == "run_stop" and types.index("actor_crashed") < types.index("fatal")
    crashed = [r.event for r in recs if r.type == "actor_crashed"][0]
    assert crashed.actor == actor and crashed.traceback == fatal["traceback"]
    assert fold(recs, until_seq=fatal["seq"]).to_dict() == fatal["state"]  # replay == fatal.json
    assert fold(recs).fatal_reason == "actor_crash"
    return fatal


# Each actor in turn, on a message it really gets during a run.
CASES = [
    ("SupervisorActor", "Tick"),
    ("WriterActor", "Tick"),
    ("MetricsActor", "ShardStatus"),
    ("UniverseActor", "Tick"),
    ("ShardActor", "Tick"),
]


@pytest.mark.parametrize("actor,message_type", CASES)
def test_a_crash_in_each_actor_ends_the_run_as_fatal_actor_crash_after_the_frames_are_safe(tmp_path, actor, message_type):
    plant = start_plant(tmp_path)
    target = {"SupervisorActor": plant.sup, "WriterActor": plant.writer, "MetricsActor": plant.metrics,
              "UniverseActor": plant.universe, "ShardActor": plant.shards[1]}[actor]
    target.tell(m.InjectCrash(message_type))
    plant.tick()
    fatal = assert_fatal_actor_crash(tmp_path, plant, actor, message_type, "InjectedCrash")
    assert fatal["shard"] == (1 if actor == "ShardActor" else -1)
    # Every frame handed to the writer before the crash is in the files, intact, fsynced at close.
    result = verify_run(tmp_path, show_progress=False)
    assert result["ok"] and result["totals"]["frames"] == 10 and result["totals"]["crc_mismatch"] == 0


def test_a_real_handler_crash_in_the_writer_keeps_the_runlog_and_loses_no_written_frame(tmp_path):
    """Not the hook: a writer whose metrics append has a bug. After its crash the writer appends
    no more frames (counted as lost) but still writes the runlog and fatal.json and fsyncs."""

    class BuggyWriter(WriterActor):
        def _append_metrics(self, name, data):
            raise KeyError(name)

    plant = start_plant(tmp_path, writer_cls=BuggyWriter)
    plant.sup.ask(m.GetStatus())
    plant.writer.tell(m.AppendMetrics("global.ndjson", b"{}\n"))
    assert_fatal_actor_crash(tmp_path, plant, "WriterActor", "AppendMetrics", "KeyError: 'global.ndjson'")
    result = verify_run(tmp_path, show_progress=False)
    assert result["ok"] and result["totals"]["frames"] == 10


def test_a_real_handler_crash_in_a_shard_stops_its_reader(tmp_path):
    class BuggyShard(ShardActor):
        def _find_new_tokens(self, frames):
            raise ValueError("bad frame")

    plant = start_plant(tmp_path, shard_cls=BuggyShard)  # the first FrameBatch crashes shard 0 (and shard 1)
    fatal = assert_fatal_actor_crash(tmp_path, plant, "ShardActor", "FrameBatch", "ValueError: bad frame")
    assert fatal["shard"] in (0, 1)
    assert all(r.stopped for r in plant.readers.values())  # stopped by the supervisor, through the crashed shard
    assert verify_run(tmp_path, show_progress=False)["totals"]["frames"] == 10


def test_a_shard_that_crashed_in_setup_still_answers_the_stop_so_the_run_does_not_wait_its_grace(tmp_path):
    """Shard 1's setup fails after the run started (a gate makes the order certain); it never
    built what its status report reads, yet stopping it must still say ShardStopped. The clock
    is a ManualClock nobody advances: without the answer the supervisor's 15 s stop grace would
    never run out and the run would never end."""
    go = threading.Event()

    class SetupCrash(ShardActor):
        def setup(self):
            if self.shard == 1:
                go.wait(10)
                raise RuntimeError("setup broke")
            super().setup()

    plant = start_plant(tmp_path, shard_cls=SetupCrash, live=(0,))
    go.set()
    fatal = assert_fatal_actor_crash(tmp_path, plant, "ShardActor", "on_start", "RuntimeError: setup broke")
    assert fatal["shard"] == 1 and plant.readers[0].stopped and 1 not in plant.readers
    assert verify_run(tmp_path, show_progress=False)["totals"]["frames"] == 6


def test_a_crash_reported_before_the_supervisor_has_its_writer_is_written_once_it_has(tmp_path):
    """An actor can crash in its setup before AttachPeers reaches the supervisor: the crash, the
    fatal record and fatal.json wait for the writer instead of vanishing, the run does not start
    after it, and it ends (exit 1) as soon as the writer is there."""
    clock = ManualClock()
    config = cfg()
    done, codes = threading.Event(), []
    sup = SupervisorActor.start("r1", "offline", config, clock, lambda c: (codes.append(c), done.set()))
    sup.tell(m.ActorCrashed(actor="ShardActor", shard=1, message_type="on_start", error="RuntimeError: early", traceback="Traceback (most recent call last):\n  early\n"))
    sup.ask(m.GetStatus())  # barrier: the crash is handled, with no writer yet
    assert not done.is_set()
    writer = WriterActor.start(tmp_path, config, clock, {s: DepthGauge() for s in range(config.ws_shards)})
    metrics = MetricsActor.start(writer, config.ws_shards, sup)
    writer.tell(m.AttachWriterPeers(sup, metrics))
    sup.tell(m.AttachPeers(writer=writer, shards={}))
    sup.tell(m.StartRun(TOKENS, markets=2))
    assert done.wait(20) and codes == [1]
    pykka.ActorRegistry.stop_all()  # the writer closes (fsync) on stop
    types = [r.type for r in read_runlog(tmp_path).records]
    assert types == ["actor_crashed", "fatal", "heartbeat", "run_stop"]
    fatal = orjson.loads((tmp_path / "fatal.json").read_bytes())
    assert fatal["reason"] == "actor_crash" and fatal["actor"] == "ShardActor" and fatal["error"] == "RuntimeError: early"


def test_when_the_supervisor_crashes_again_while_ending_the_run_the_process_still_ends(tmp_path):
    class FragileSupervisor(SupervisorActor):
        def _actor_crashed(self, msg):
            raise RuntimeError("broken fatal path")

    clock = ManualClock()
    done, codes = threading.Event(), []
    sup = FragileSupervisor.start("r1", "offline", cfg(), clock, lambda c: (codes.append(c), done.set()))
    sup.tell(m.InjectCrash("Tick"))
    sup.tell(m.Tick(clock.mono_ns()))
    assert done.wait(10) and codes == [1]


@dataclass(frozen=True)
class Stray:
    """A message no actor handles."""


def test_unknown_messages_are_recorded_counted_and_the_run_goes_on(tmp_path):
    plant = start_plant(tmp_path)
    for ref in (plant.sup, plant.writer, plant.metrics, plant.universe, plant.shards[0]):
        for _ in range(3):
            ref.tell(Stray())
    for ref in (plant.writer, plant.metrics, plant.universe, plant.shards[0]):
        ref.ask(m.GetStatus() if ref is not plant.shards[0] else Stray())  # barrier (unknown too, counted)
    plant.sup.ask(m.GetStatus())
    plant.sup.tell(m.RequestStop("test"))
    assert plant.done.wait(20) and plant.codes == [0]
    unknown = [r for r in read_runlog_dicts(tmp_path) if r["type"] == "unknown_message"]
    by_actor = {}
    for r in unknown:
        by_actor.setdefault((r["actor"], r["shard"], r["message_type"]), []).append(r["count"])
    # The 1st, 2nd and 4th of a kind are recorded (powers of two), so a flood cannot flood the runlog.
    assert by_actor[("SupervisorActor", -1, "Stray")] == [1, 2]
    assert by_actor[("WriterActor", -1, "Stray")] == [1, 2]
    assert by_actor[("UniverseActor", -1, "Stray")] == [1, 2]
    assert by_actor[("MetricsActor", -1, "Stray")] == [1, 2]
    assert by_actor[("ShardActor", 0, "Stray")] == [1, 2, 4]
    assert not (tmp_path / "fatal.json").exists()


def test_an_injected_crash_in_a_capture_subprocess_gives_fatal_json_and_frames_that_verify(data_dir):
    """End to end: the test-only PMARB_TEST_INJECT_CRASH hook makes the writer raise on its 5th
    frame batch of a real offline capture."""
    proc = run_cli("capture", "--offline", "--offline-speed", "0", "--ws-shards", "2", "--batch-max-frames", "10", "--run-id", "crash", "--data-dir", str(data_dir),
                   env={"PMARB_TEST_INJECT_CRASH": "WriterActor:AppendFrames:5"})
    run_dir = data_dir / "runs" / "crash"
    assert proc.returncode == 1, proc.stderr
    assert "actor crash: WriterActor handling AppendFrames" in proc.stderr and "FATAL (actor_crash)" in proc.stderr
    assert "Traceback" not in proc.stderr
    fatal = orjson.loads((run_dir / "fatal.json").read_bytes())
    assert fatal["reason"] == "actor_crash" and fatal["actor"] == "WriterActor" and fatal["message_type"] == "AppendFrames"
    assert "InjectedCrash" in fatal["traceback"]
    runlog = read_runlog_dicts(run_dir)
    assert runlog[-1]["type"] == "run_stop" and runlog[-1]["reason"] == "fatal: actor_crash"
    verify = run_cli("capture-verify", "--run-dir", str(run_dir), "--json")
    assert verify.returncode == 0, verify.stdout
    # The files hold exactly what the writer wrote before its crash (4 batches of 10); what the
    # readers handed over afterwards is lost and shows as run_stop's frames_total above it.
    written = sum(runlog[-1]["frames_written"].values())
    assert orjson.loads(verify.stdout)["totals"]["frames"] == written == 40 < runlog[-1]["frames_total"]
    replay = run_cli("capture-replay", "--run-dir", str(run_dir), "--until-seq", str(fatal["seq"]), "--json")
    replayed = orjson.loads(replay.stdout)["state"]
    replayed.pop("missing_token_ids")  # the command adds the ids; fatal.json lists them in missing_tokens.json
    assert replay.returncode == 0 and replayed == fatal["state"]


def test_every_actor_of_the_plant_has_the_one_base_class():
    import importlib
    import inspect
    import pkgutil

    import pm_arb.actors
    from pm_arb.actors.base import PlantActor

    actors = []
    for info in pkgutil.iter_modules(pm_arb.actors.__path__):
        mod = importlib.import_module(f"pm_arb.actors.{info.name}")
        actors += [c for _, c in inspect.getmembers(mod, inspect.isclass) if issubclass(c, pykka.Actor) and c.__module__ == mod.__name__]
    names = {c.__name__ for c in actors}
    assert {"SupervisorActor", "ShardActor", "WriterActor", "MetricsActor", "UniverseActor"} <= names
    assert all(issubclass(c, PlantActor) for c in actors), [c for c in actors if not issubclass(c, PlantActor)]


def test_a_bad_test_crash_hook_value_is_refused_before_anything_starts(data_dir):
    proc = run_cli("capture", "--offline", "--run-id", "x", "--data-dir", str(data_dir), env={"PMARB_TEST_INJECT_CRASH": "Nobody:Tick"}, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "PMARB_TEST_INJECT_CRASH=Nobody:Tick" in proc.stderr
    assert not (data_dir / "runs" / "x").exists()


def test_a_writer_crash_while_closing_after_run_stop_still_exits_1(tmp_path):
    """Too late for the runlog (run_stop is written), not too late for the exit code."""
    plant = start_plant(tmp_path)
    plant.writer.tell(m.InjectCrash("CloseWriter"))
    plant.sup.tell(m.RequestStop("test"))
    assert plant.done.wait(20) and plant.codes == [1]
    assert read_runlog_dicts(tmp_path)[-1]["type"] == "run_stop"
