"""`gateway run --workers N`'s supervisor (cli/run.py): which process that died is fatal and which is tried again,
and that a child dies with a supervisor killed outright. The workers end to end: tests/test_e2e_workers.py."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from cli import run


class Dead:
    """A process that has exited, as the supervisor sees it."""

    def __init__(self, exitcode: int, pid: int = 4242):
        self.exitcode, self.pid = exitcode, pid

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        """Exited already: nothing to wait for."""


@pytest.fixture
def supervisor(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # the supervisor sets it for its children
    sup = run.Supervisor({"listen_host": "127.0.0.1", "listen_port": 0}, (), 2, tmp_path)
    sup.started = []
    monkeypatch.setattr(sup, "_start", lambda name: sup.started.append(name))
    yield sup
    sup.reservation.close()


def died(sup: run.Supervisor, name: str, up: bool, exitcode: int = 1) -> None:
    """`name`'s process exits, having been up or not, and the supervisor tends its processes."""
    ready = threading.Event()
    if up:
        ready.set()
    sup.processes[name], sup.ready[name] = Dead(exitcode), ready
    sup._tend()


def test_a_process_that_fails_its_first_start_stops_the_gateway(supervisor):
    with pytest.raises(SystemExit) as e:
        died(supervisor, "proxy 1", up=False, exitcode=3)
    assert e.value.code == 3 and supervisor.started == []


def test_a_replacement_that_fails_before_it_is_up_is_tried_again_after_a_growing_pause(supervisor):
    died(supervisor, "proxy 2", up=True, exitcode=-9)
    assert supervisor.started == ["proxy 2"]  # one that was up: started again at once
    died(supervisor, "proxy 2", up=False)  # its replacement refuses the rules: the gateway serves on
    first = supervisor.pending["proxy 2"]
    assert "proxy 2" not in supervisor.processes and supervisor.started == ["proxy 2"]
    supervisor.pending["proxy 2"] = time.monotonic()  # the pause is over
    supervisor._tend()
    assert supervisor.started == ["proxy 2", "proxy 2"] and not supervisor.pending
    died(supervisor, "proxy 2", up=False)
    assert supervisor.pending["proxy 2"] - time.monotonic() > first - time.monotonic()  # a longer pause
    assert supervisor.failed["proxy 2"] == 2


def test_replacements_that_keep_failing_count_against_the_restarts(supervisor):
    died(supervisor, "proxy 2", up=True)
    for _ in range(run.MAX_RESTARTS - 1):
        died(supervisor, "proxy 2", up=False)
    with pytest.raises(SystemExit):
        died(supervisor, "proxy 2", up=False)


def _orphan(pids) -> None:
    run.die_with_parent()
    pids.put(os.getpid())
    time.sleep(120)


def _parent(pids) -> None:
    multiprocessing.get_context("spawn").Process(target=_orphan, args=(pids,)).start()
    time.sleep(120)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_a_supervisor_killed_outright():
    ctx = multiprocessing.get_context("spawn")
    pids = ctx.Queue()
    parent = ctx.Process(target=_parent, args=(pids,))
    parent.start()
    try:
        child = pids.get(timeout=60)  # armed: it called die_with_parent
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.join(30)
    deadline = time.monotonic() + 30
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _gone(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")
