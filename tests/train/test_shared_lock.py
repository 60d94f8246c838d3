"""The shared-file-system lock (train/shared_lock.py): a live owner is refused or waited for and
named; a stale lock (dead pid on this machine, stopped heartbeat on any host) is taken over, by
exactly one of several racing takers; the heartbeat advances while held; release removes the
file, but never a lock that another process took over meanwhile.

Nothing here depends on the machine's speed: staleness is decided on a fake clock or on
heartbeats planted far in the past, and every wait on another process is a hang guard."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from budgetlm.errors import EXIT_BUSY
from budgetlm.train import shared_lock
from budgetlm.train.shared_lock import LockBusy, LockSettingError, SharedLock, read_owner

NOW = 2_000_000_000.0  # the fake clock's time
HOST = socket.gethostname()

HOLDER = textwrap.dedent(
    """
    import sys
    from budgetlm.train.shared_lock import SharedLock
    lock = SharedLock(sys.argv[1]).acquire(blocking=False)
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
    if sys.argv[2:] == ["release"]:
        lock.release()
    """
)

# Takers that all judge the same stale lock before any of them moves it: each waits at the
# take-over (`SharedLock._remove_stale`) until every taker has arrived there. "together": then
# all go at once; "in-turn": then one after the other, each once the one before has the lock or
# was refused, so that every later taker comes to a fresh lock it had judged stale in its
# earlier state (and must not move it: the take-over guard has it judge again).
TAKER = textwrap.dedent(
    """
    import os, pathlib, sys, time
    from budgetlm.train import shared_lock as sl
    path, gate, takers, index, mode = sys.argv[1:]
    gate, takers, index = pathlib.Path(gate), int(takers), int(index)
    real = sl.SharedLock._remove_stale
    def wait_for(condition):
        deadline = time.monotonic() + 120  # a hang guard
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
    def gated(*args, **kwargs):
        sl.SharedLock._remove_stale = real  # only the first take-over waits
        (gate / f"arrived{index}").touch()
        wait_for(lambda: len(list(gate.glob("arrived*"))) == takers)
        if mode == "in-turn" and index:
            wait_for(lambda: (gate / f"done{index - 1}").exists())
        return real(*args, **kwargs)
    sl.SharedLock._remove_stale = gated
    try:
        lock = sl.SharedLock(path).acquire(blocking=False)
    except sl.LockBusy as e:
        (gate / f"done{index}").touch()
        print("busy", e.description, flush=True)
        sys.exit(4)
    (gate / f"done{index}").touch()
    print("won", lock.took_over, flush=True)
    sys.stdin.read()
    """
)


def _holder(path, *extra):
    """A process holding the lock at `path` until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def _plant(path, **fields):
    """A lock file as another owner wrote it (by default: this machine, a fresh heartbeat)."""
    me = shared_lock._machine()
    record = {
        "pid": 1,
        "host": HOST,
        "since": "2025-06-01 14:02:11 +0000",
        "token": "f" * 32,
        "boot_id": me["boot_id"],
        "pidns": me["pidns"],
        "heartbeat_every": 10.0,
        "heartbeat": NOW,
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")
    return record


def _wait_for(condition, what):
    deadline = time.monotonic() + 60  # a hang guard, not a speed test
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_live_lock_held_by_another_process_is_refused_naming_its_owner(tmp_path):
    path = tmp_path / "x.lock"
    holder = _holder(path, "release")
    try:
        with pytest.raises(LockBusy) as refused:
            SharedLock(path).acquire(blocking=False)
        assert refused.value.exit_code == EXIT_BUSY
        assert refused.value.description.startswith(f"pid {holder.pid} on {HOST} since ")
        assert "last heartbeat" in refused.value.description
        assert str(path) in str(refused.value)
        with pytest.raises(LockBusy):  # a blocking wait that times out says the same
            SharedLock(path).acquire(timeout=0.2, poll=0.05)
        # A waiter gets the lock once the holder lets go: released as soon as the wait begins.
        waits = []

        def let_go(owner):
            waits.append(owner)
            holder.stdin.close()

        lock = SharedLock(path).acquire(timeout=120, poll=0.05, on_wait=let_go)
        assert waits and waits[0].startswith(f"pid {holder.pid} on {HOST}")
        assert lock.held and lock.took_over is None  # released cleanly: nothing taken over
        assert read_owner(path).pid == os.getpid()
        lock.release()
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    assert not path.exists()


def test_the_lock_of_a_killed_process_on_this_machine_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    holder = _holder(path)
    holder.send_signal(signal.SIGKILL)  # no clean-up: its lock file stays
    holder.wait(timeout=60)
    assert read_owner(path).pid == holder.pid
    lock = SharedLock(path).acquire(blocking=False)  # at once: no heartbeat age needed
    try:
        assert lock.took_over.startswith(f"pid {holder.pid} on {HOST} since ")
        assert "gone without releasing it" in lock.took_over
        assert lock.previous.pid == holder.pid
        assert read_owner(path).pid == os.getpid()
    finally:
        lock.release()


def test_a_planted_lock_of_a_dead_pid_is_stale_however_fresh_its_heartbeat(tmp_path):
    path = tmp_path / "x.lock"
    pid = _dead_pid()
    _plant(path, pid=pid)
    lock = SharedLock(path, clock=lambda: NOW).acquire(blocking=False)
    assert f"pid {pid} on {HOST}" in lock.took_over
    lock.release()


def test_another_hosts_lock_is_stale_only_once_its_heartbeat_is(tmp_path):
    path = tmp_path / "x.lock"
    clock = lambda: NOW  # noqa: E731
    _plant(path, host="node07.elsewhere", pid=_dead_pid(), heartbeat=NOW - 59)
    with pytest.raises(LockBusy) as refused:  # its pid means nothing here
        SharedLock(path, stale_after=60, heartbeat=10, clock=clock).acquire(blocking=False)
    assert "on node07.elsewhere since 2025-06-01 14:02:11 +0000" in refused.value.description
    assert "(last heartbeat 59 s ago)" in refused.value.description
    # An owner that beats every 30 s is given three beats, whatever the reader's own limit.
    _plant(path, host="node07.elsewhere", heartbeat=NOW - 61, heartbeat_every=30.0)
    with pytest.raises(LockBusy):
        SharedLock(path, stale_after=60, heartbeat=10, clock=clock).acquire(blocking=False)
    _plant(path, host="node07.elsewhere", heartbeat=NOW - 61)
    lock = SharedLock(path, stale_after=60, heartbeat=10, clock=clock).acquire(blocking=False)
    try:
        assert lock.took_over.startswith("pid 1 on node07.elsewhere since 2025-06-01")
        assert "last heartbeat was 61 s ago" in lock.took_over
        assert read_owner(path).host == HOST
    finally:
        lock.release()


def test_same_host_name_on_another_boot_or_pid_namespace_is_judged_by_its_heartbeat(tmp_path):
    # Two containers with one host name, or a node that rebooted: the pid means nothing here.
    path = tmp_path / "x.lock"
    for other in ({"boot_id": "another-boot"}, {"pidns": "pid:[1]"}):
        _plant(path, pid=_dead_pid(), **other)
        with pytest.raises(LockBusy):
            SharedLock(path, clock=lambda: NOW).acquire(blocking=False)
        _plant(path, pid=_dead_pid(), heartbeat=NOW - 600, **other)
        SharedLock(path, clock=lambda: NOW).acquire(blocking=False).release()


@pytest.mark.parametrize("mode", ["together", "in-turn"])
def test_racing_takers_of_a_stale_lock_exactly_one_wins(tmp_path, mode):
    takers = 3
    for round_ in range(2):
        path = tmp_path / f"race{round_}" / "x.lock"
        gate = tmp_path / f"gate{round_}"
        gate.mkdir()
        _plant(path, host="node07.elsewhere", heartbeat=time.time() - 10_000)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", TAKER, str(path), str(gate), str(takers), str(i), mode],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(takers)
        ]
        try:
            lines = [p.stdout.readline().strip() for p in procs]
            winners = [p for p, line in zip(procs, lines, strict=True) if line.startswith("won")]
            assert len(winners) == 1, lines
            (winner,) = winners
            assert read_owner(path).pid == winner.pid
            for p, line in zip(procs, lines, strict=True):
                if p is winner:
                    assert "on node07.elsewhere" in line  # it names whose lock it took
                else:
                    assert line.startswith(f"busy pid {winner.pid} on {HOST}"), lines
                    assert p.wait(timeout=60) == EXIT_BUSY
        finally:
            for p in procs:
                p.stdin.close()
                p.wait(timeout=60)
        assert not path.exists()  # the winner released it on exit
        assert os.listdir(path.parent) == []  # no temporary or moved-aside files left


def test_the_heartbeat_advances_while_held_and_the_record_keeps_its_length(tmp_path):
    path = tmp_path / "x.lock"
    ticks = iter(range(10**9))
    clock = lambda: NOW + next(ticks)  # noqa: E731
    lock = SharedLock(path, heartbeat=0.02, stale_after=5, clock=clock).acquire()
    try:
        first, size = read_owner(path), path.stat().st_size
        _wait_for(lambda: read_owner(path).heartbeat >= first.heartbeat + 3, "three beats")
        now = read_owner(path)
        assert now.token == first.token and now.pid == os.getpid()
        assert path.stat().st_size == size  # rewritten in place, never half a record
    finally:
        lock.release()
    assert not path.exists()


def test_release_and_with_block_remove_the_file_and_exit_releases_too(tmp_path):
    path = tmp_path / "sub" / "x.lock"  # its folder is made
    lock = SharedLock(path).acquire()
    assert lock.held and read_owner(path).pid == os.getpid()
    lock.release()
    lock.release()  # idempotent
    assert not lock.held and not path.exists()
    with SharedLock(path) as held:
        assert held.held and path.exists()
    assert not path.exists()
    code = "import sys; from budgetlm.train.shared_lock import SharedLock; "
    code += "SharedLock(sys.argv[1]).acquire(); print('locked')"
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "locked", done.stderr
    assert not path.exists()  # the interpreter's exit released it


def test_a_lock_taken_over_meanwhile_is_never_removed_by_its_old_owner(tmp_path):
    # Our process looked dead to another host (its heartbeat stopped: paused, cut off) and the
    # lock was taken over: our heartbeat notices, and our release leaves the new lock alone.
    path = tmp_path / "x.lock"
    lock = SharedLock(path, heartbeat=0.02, stale_after=5).acquire()
    try:
        planted = path.with_name("planted")
        _plant(planted, host="node07.elsewhere", token="a" * 32)
        os.replace(planted, path)
        _wait_for(lambda: lock.lost is not None, "the heartbeat to notice")
        assert "node07.elsewhere" in lock.lost
    finally:
        lock.release()
    assert read_owner(path).token == "a" * 32


def test_reentrant_locks_are_shared_by_the_process_and_released_by_the_last(tmp_path):
    path = tmp_path / "x.lock"
    first = SharedLock(path, reentrant=True).acquire(blocking=False)
    token = read_owner(path).token
    second = SharedLock(path, reentrant=True).acquire(blocking=False)
    assert read_owner(path).token == token  # the same hold
    with pytest.raises(LockBusy) as refused:  # not re-entrant: even this process is refused
        SharedLock(path).acquire(blocking=False)
    assert f"pid {os.getpid()}" in refused.value.description
    first.release()
    assert path.exists() and second.held
    second.release()
    assert not path.exists()
    # A forked child does not inherit the right to its parent's lock.
    lock = SharedLock(path, reentrant=True).acquire(blocking=False)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                SharedLock(path, reentrant=True).acquire(blocking=False)
            except LockBusy:
                os._exit(4)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 4
        assert read_owner(path).pid == os.getpid()  # the child's exit did not release it
    finally:
        lock.release()


def test_an_empty_lock_file_is_taken_over_once_older_than_a_heartbeat(tmp_path):
    # Empty: another process is writing it (no hard links on this file system), or it was left
    # by a budgetlm that locked with flock. No holder to name, so no take-over message.
    path = tmp_path / "x.lock"
    path.write_text("")
    made = path.stat().st_mtime
    with pytest.raises(LockBusy) as refused:
        SharedLock(path, heartbeat=10, clock=lambda: made + 5).acquire(blocking=False)
    assert refused.value.description == "another process (starting up)"
    lock = SharedLock(path, heartbeat=10, clock=lambda: made + 11).acquire(blocking=False)
    assert lock.took_over is None and read_owner(path).pid == os.getpid()
    lock.release()


def test_settings_that_cannot_work_are_refused(monkeypatch, tmp_path):
    with pytest.raises(LockSettingError, match="shorter than the limit"):
        SharedLock(tmp_path / "x.lock", heartbeat=60, stale_after=60)
    monkeypatch.setenv(shared_lock.STALE_ENV, "soon")
    with pytest.raises(LockSettingError, match="BUDGETLM_LOCK_STALE_AFTER"):
        SharedLock(tmp_path / "x.lock")
    monkeypatch.setenv(shared_lock.STALE_ENV, "120")
    monkeypatch.setenv(shared_lock.HEARTBEAT_ENV, "20")
    lock = SharedLock(tmp_path / "x.lock")
    assert (lock.heartbeat, lock.stale_after) == (20.0, 120.0)
