"""The README tour runs start to finish with no network, and the capture's printed next step
runs as printed. `uv` and `pm_arb` are shell functions here that run this interpreter's
pm_arb, so the lines are executed exactly as the README and the capture print them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import orjson

from tests.conftest import REPO, cli_env, run_cli

SHIM = f'''
uv() {{ [ "$1" = run ] && [ "$2" = pm_arb ] || {{ echo "unexpected uv call: $*" >&2; return 99; }}; shift 2; {shlex.quote(sys.executable)} -m pm_arb "$@"; }}
pm_arb() {{ {shlex.quote(sys.executable)} -m pm_arb "$@"; }}
'''


def tour_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## A tour"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_readme_tour_runs_start_to_finish_without_network(tmp_path):
    block = tour_block()
    assert "--sim" in block and "latest" in block and "capture-plot" in block
    # The only change: a 3 s simulated capture instead of 20 s, to keep the suite fast.
    assert block.count("--duration-seconds 20") == 1
    script = "set -euo pipefail\n" + SHIM + block.replace("--duration-seconds 20", "--duration-seconds 3")
    env = cli_env({"PM_ARB_DATA_DIR": str(tmp_path / "data")})
    env.pop("UV", None)
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = orjson.loads(run_cli("runs", "--json", env={"PM_ARB_DATA_DIR": str(tmp_path / "data")}).stdout)["runs"]
    assert [r["mode"] for r in runs] == ["offline", "sim"]
    assert runs[1]["check"]["verdict"] == "PASS"
    assert (tmp_path / "data" / "runs" / runs[1]["run_id"] / "run_plot.html").is_file()
    (cut,) = (tmp_path / "cuts").iterdir()
    assert orjson.loads((cut / "check.json").read_bytes())["verdict"] == "PASS"
    assert "n/a   clean_stop" in proc.stdout


def test_the_capture_prints_a_next_step_that_runs_as_printed(tmp_path):
    env = cli_env({"PM_ARB_DATA_DIR": str(tmp_path / "data"), "UV": "/usr/bin/uv"})  # as under `uv run`
    cap = subprocess.run([sys.executable, "-m", "pm_arb", "capture", "--offline", "--offline-speed", "0"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert cap.returncode == 0, cap.stderr
    nxt = cap.stderr.rsplit("next: ", 1)[1].strip()
    assert nxt.startswith("uv run pm_arb capture-check --run-dir ")
    run = subprocess.run(["bash", "-c", SHIM + nxt], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "verdict: PASS" in run.stdout, run.stdout + run.stderr
