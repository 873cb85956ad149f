"""The five FAIL gates of MASTER.md section 6, and pm_arb's own clean_stop and book_integrity
(ADR/0005), from already-folded figures. Pure."""

from __future__ import annotations

from typing import Any

from pm_arb.clock import wall_iso


def _clean_stop(audit: dict[str, Any]) -> dict[str, Any]:
    stop, last = audit.get("run_stop"), audit.get("last_record")
    if stop is not None:
        return {"pass": True, "figure": f"run_stop at seq {stop['seq']} (reason {stop['reason']})", "value": True}
    where = f"the runlog ends at seq {last['seq']} ({last['type']}, {wall_iso(last['wall_ns_utc'])})" if last else "the runlog is empty"
    return {
        "pass": False,
        "figure": f"no run_stop: {where}; the capture is still running, or it was killed (SIGKILL, OOM, power "
                  "loss) and nothing after that moment was captured",
        "value": False,
    }


def _book_integrity(books: dict[str, Any] | None) -> dict[str, Any]:
    """Fails on any incident of the book audit (capture-books, ADR/0010)."""
    if books is None:
        return {"pass": None, "figure": "not checked (run capture-books, or drop --no-books)", "value": None}
    t = books["totals"]
    causes = ", ".join(f"{c}={n}" for c, n in sorted(t["incidents_by_cause"].items())) or "none"
    return {
        "pass": t["incidents"] == 0,
        "figure": f"incidents={t['incidents']} ({causes}) over {t['tokens_checked']} tokens, {t['out_of_sync_s']:g} s out of sync",
        "value": t["incidents"],
    }


def _not_for_a_slice(gate: dict[str, Any], slice_of: dict[str, Any], why: str) -> dict[str, Any]:
    source = slice_of.get("run_dir") or slice_of.get("run_id") or "the source run"
    return {"pass": None, "applies": False, "figure": f"does not apply to a slice: {why}; check the source run {source}", "value": gate["value"]}


def gates(
    audit: dict[str, Any],
    latency: dict[str, Any],
    verify_totals: dict[str, Any] | None,
    fatal_present: bool,
    slice_of: dict[str, Any] | None = None,
    fatal_seq_in_runlog: int | None = None,
    books: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every gate; on a slice (a window of a run) the whole-run gates say they do not apply
    instead of failing: a window need not hold the run's stop, and fatal.json stays with the source."""
    reconnects = latency["reconnects"]["total"]
    incidents = latency["disconnected"]["midrun"]["incidents"]
    dropped = latency["drops"]["dropped_messages_total"]
    out: dict[str, Any] = {
        "heartbeat_gaps": {
            "pass": audit["gaps_over_threshold"] == 0,
            "figure": f"gaps_over_threshold={audit['gaps_over_threshold']} (threshold {audit['threshold_s']:g} s, max gap {audit['max_gap_s']:.3f} s)",
            "value": audit["gaps_over_threshold"],
        },
        "reconnects_midrun": {
            "pass": reconnects == 0 and incidents == 0,
            "figure": f"reconnects.total={reconnects}, disconnected.midrun.incidents={incidents}",
            "value": reconnects + incidents,
        },
        "drops": {
            "pass": dropped == 0,
            "figure": f"drops.dropped_messages_total={dropped}",
            "value": dropped,
        },
    }
    if verify_totals is None:
        out["crc_mismatch"] = {"pass": None, "figure": "not checked (run capture-verify)", "value": None}
    else:
        bad = verify_totals["crc_mismatch"]
        other = {k: verify_totals[k] for k in ("seq_gaps", "idx_mismatch", "torn_tail_bytes", "frames_missing", "header_damage", "file_errors") if verify_totals.get(k)}
        extra = ("; also " + ", ".join(f"{k}={v}" for k, v in other.items())) if other else ""
        out["crc_mismatch"] = {"pass": bad == 0 and not other, "figure": f"totals.crc_mismatch={bad}{extra}", "value": bad}
    out["clean_stop"] = _clean_stop(audit)
    out["book_integrity"] = _book_integrity(books)
    out["fatal"] = {"pass": not fatal_present, "figure": "fatal.json present" if fatal_present else "no fatal.json", "value": fatal_present}
    if slice_of is not None:
        if not out["clean_stop"]["pass"]:
            out["clean_stop"] = _not_for_a_slice(out["clean_stop"], slice_of, "its window ends before the run's run_stop")
        if fatal_seq_in_runlog is not None and not fatal_present:
            out["fatal"] = {"pass": False, "figure": f"the window holds the run's fatal event (runlog seq {fatal_seq_in_runlog})", "value": True}
        elif not fatal_present:
            out["fatal"] = _not_for_a_slice(out["fatal"], slice_of, "fatal.json is written to the source run only")
    for g in out.values():
        g.setdefault("applies", True)
    checked = [g["pass"] for g in out.values() if g["pass"] is not None]
    verdict = "PASS" if all(checked) else "FAIL"
    return {"gates": out, "verdict": verdict}
