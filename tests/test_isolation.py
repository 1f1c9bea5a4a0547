"""The suite isolates its tests: what a test leaves behind fails it.

Each test here runs a small pytest session of its own, with this suite's
conftest, in a child process, and reads the outcome.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

INNER_CONFTEST = """
import tests.leaks

pytest_plugins = ["tests.conftest"]

# These leaks never end: do not wait for them as long as the suite does.
tests.leaks.GRACE = 0.5


def pytest_configure(config):
    config.addinivalue_line("markers", "postgresql: runs against the PostgreSQL server")
"""

LEAKY_TESTS = """
import subprocess
import sys
import threading

import pytest
from sqlalchemy import create_engine

kept = []  # what the tests leave behind stays reachable: only the leak check sees it
finish = threading.Event()


@pytest.fixture
def finished_in_teardown():
    yield
    finish.set()


def test_leaves_a_thread():
    threading.Thread(target=threading.Event().wait, name="leaky-thread", daemon=True).start()


def test_leaves_a_child_process():
    kept.append(subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE))


def test_leaves_an_sqlite_connection(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'leaky.sqlite3'}")
    kept.append(engine.connect())


@pytest.fixture
def dies_in_teardown():
    die = threading.Event()

    def serve():
        die.wait()
        raise ConnectionResetError("the server went away")

    threading.Thread(target=serve, name="dying-thread").start()
    yield
    die.set()


def test_whose_thread_dies_in_teardown(dies_in_teardown):
    pass


def test_whose_thread_ends_in_teardown(finished_in_teardown):
    threading.Thread(target=finish.wait, name="finishing-thread").start()


def test_that_cleans_up(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'tidy.sqlite3'}")
    with engine.connect():
        pass
    engine.dispose()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose sessions have this suite's fixtures and leak check."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("COLUMNS", "1000")  # the summary lines in full
    pytester.makeconftest(INNER_CONFTEST)
    return pytester


def run(inner: pytest.Pytester) -> pytest.RunResult:
    return inner.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=120)


def test_what_a_test_leaves_behind_fails_it_by_name(inner: pytest.Pytester):
    inner.makepyfile(test_leaky=LEAKY_TESTS)

    result = run(inner)

    result.assert_outcomes(passed=6, errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR test_leaky.py::test_leaves_a_thread - Failed: the test left behind:",
            "  thread 'leaky-thread'",
            "ERROR test_leaky.py::test_leaves_a_child_process - Failed: the test left behind:",
            "  child process * -c input()",
            "ERROR test_leaky.py::test_leaves_an_sqlite_connection - *",
            "  connection SQLite */leaky.sqlite3 opened at test_leaky.py:*",
            # Not the next test's error, as when its exception was reported after the test.
            "ERROR test_leaky.py::test_whose_thread_dies_in_teardown - *Exception in thread"
            " dying-thread*",
        ]
    )
    result.stdout.no_fnmatch_line("*finishing-thread*")
