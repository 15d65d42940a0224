"""The suite's time budget (tests/budget.py), on a suite of its own run by pytest in a subprocess."""

import os
import subprocess
import sys

from tests.conftest import ROOT

SUITE = """
import time

def test_quick():
    pass

def test_slow():
    time.sleep(1.5)
"""


def run_suite(tmp_path, budget: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_suite.py").write_text(SUITE, encoding="utf-8")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    env.pop("QUICKFT_TEST_BUDGET_S", None)
    if budget is not None:
        env["QUICKFT_TEST_BUDGET_S"] = budget
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.budget", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def test_a_suite_past_its_budget_fails_naming_its_slowest_tests(tmp_path):
    done = run_suite(tmp_path, "1")
    assert done.returncode == 1, done.stdout
    assert "2 passed" in done.stdout  # every test passed: the budget alone fails the session
    assert "test budget exceeded: this session took" in done.stdout and "its budget is 1 s" in done.stdout
    slowest = done.stdout[done.stdout.index("Slowest tests") :].splitlines()[1:3]
    assert slowest[0].endswith("test_suite.py::test_slow") and float(slowest[0].split()[0]) >= 1.5
    assert slowest[1].endswith("test_suite.py::test_quick")


def test_a_suite_within_its_budget_or_without_one_passes(tmp_path):
    for budget in ("60", "0", None):  # None: the suite's own ini has no budget
        done = run_suite(tmp_path, budget)
        assert done.returncode == 0 and "test budget" not in done.stdout, (budget, done.stdout)
