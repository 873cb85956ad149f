"""The README's "Using the data" snippets, run as written against a real run and its export,
so they cannot drift from what pm_arb produces (Spark's needs a cluster and is not run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPET = re.compile(r"<!-- snippet: (\w+) -->\n```python\n(.*?)```", re.S)


def snippets() -> dict[str, str]:
    return dict(SNIPPET.findall(README.read_text()))


def test_readme_has_the_snippets():
    assert set(snippets()) == {"reader", "pandas", "polars", "duckdb"}
    assert "spark.read.parquet" in README.read_text()


@pytest.mark.parametrize("name", ["reader", "pandas", "polars", "duckdb"])
def test_snippet_runs(name, offline_run, offline_export, tmp_path):
    out, _ = offline_export
    (tmp_path / "data" / "runs").mkdir(parents=True)
    (tmp_path / "data" / "runs" / "run-1h").symlink_to(offline_run)
    (tmp_path / "export").symlink_to(out)
    proc = subprocess.run([sys.executable, "-c", snippets()[name]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
