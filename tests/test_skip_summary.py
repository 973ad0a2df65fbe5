"""The end of a pytest run names what it skipped: one line, grouped by reason, with counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CONFTEST = """
from pathlib import Path
import tests.conftest as shared
from tests.conftest import fashion_data_dir, pytest_collection_modifyitems, pytest_terminal_summary
shared.FASHION_SOURCE = Path("/nonexistent/fashion-mnist")
"""
TESTS = """
import pytest
def test_trains_a(fashion_data_dir): pass
def test_trains_b(fashion_data_dir): pass
def test_needs_an_extra(): pytest.importorskip("no_such_module_x", reason="NOT TESTED: no extra")
def test_runs(): pass
"""


def test_the_run_ends_with_one_line_of_skipped_areas_and_counts(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_areas.py").write_text(TESTS)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = proc.stdout.splitlines()[-2]
    assert line == ("NOT TESTED (3 skipped): 2 x real Fashion-MNIST is not installed at "
                    "/nonexistent/fashion-mnist (apt-get install dataset-fashion-mnist): all 2 "
                    "end-to-end tests that train on it are skipped; 1 x no extra"), proc.stdout
