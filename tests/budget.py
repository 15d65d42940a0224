"""The suite's time budget: a session that takes longer than `test_budget_s` (pyproject's pytest settings; the
QUICKFT_TEST_BUDGET_S environment variable wins, 0 turns it off) fails, naming its slowest tests.

CI (.ci/run) has a hard limit; a suite that creeps past it stops every change from landing. This fails the first
change that pushes the suite past its budget instead, on the developer's machine, with the tests to make cheaper.
Registered from conftest.py; tests/test_budget.py runs it on a suite of its own.
"""

from __future__ import annotations

import os
import time

import pytest

_started = 0.0
_durations: dict[str, float] = {}


def pytest_addoption(parser):
    parser.addini(
        "test_budget_s",
        "fail the session when it takes longer than this many seconds (0: no budget); QUICKFT_TEST_BUDGET_S wins",
        default="0",
    )


def pytest_sessionstart(session):
    global _started
    _started = time.perf_counter()
    _durations.clear()


def pytest_runtest_logreport(report):
    # setup (fixtures a test builds first), call and teardown: what the test costs the suite
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def budget_s(config) -> float:
    value = os.environ.get("QUICKFT_TEST_BUDGET_S") or config.getini("test_budget_s") or "0"
    try:
        return float(value)
    except ValueError:
        raise pytest.UsageError(f"test budget {value!r} is not a number of seconds") from None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    budget = budget_s(session.config)
    elapsed = time.perf_counter() - _started
    if not budget or elapsed <= budget or exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return
    slowest = sorted(_durations.items(), key=lambda item: -item[1])[:10]
    lines = [
        f"test budget exceeded: this session took {elapsed:.0f} s, its budget is {budget:.0f} s "
        "(pyproject.toml's test_budget_s; QUICKFT_TEST_BUDGET_S=0 turns it off). Slowest tests (setup included):"
    ] + [f"  {seconds:7.1f} s  {nodeid}" for nodeid, seconds in slowest]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter:
            reporter.write_line(line, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
