"""The public read API of a pm_arb run bundle.

    from pm_arb.reader import open_run
    run = open_run("data/runs/<run_id>")
    for frame in run.frames(start=..., end=...):   # FrameRecord, merged by receive time
        ...
    for event in run.events():                     # decoded messages, one per array element
        ...
"""

from pm_arb.reader.records import Damage, DamagedRecordError, Event, FrameRecord, Market
from pm_arb.reader.run import Run, open_run

__all__ = ["Damage", "DamagedRecordError", "Event", "FrameRecord", "Market", "Run", "open_run"]
