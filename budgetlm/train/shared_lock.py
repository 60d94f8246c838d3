"""An exclusive lock that works where the lock's folder is on a shared file system (NFS, Lustre).

Grid cells run on Slurm or Ray clusters whose nodes share the output folder. `fcntl.flock` is
no lock there: on NFS it is emulated with byte-range locks that vanish with the client's lease
(a network hiccup, a server reboot) and are node-local under the common `local_lock=flock`
mount option; on Lustre it is node-local (`localflock`) or fails outright (`noflock`) depending
on how the file system was mounted. Nothing here uses it, not even as an extra local guard: a
second mechanism that can disagree with the first (held locally, free on the shared file) would
only make the lock harder to reason about. The lock is the file itself:

- **Taking it**: the owner record (JSON: host, pid, a random token, start time, heartbeat time)
  is written to a temporary file in the same folder, which is then hard-linked to the lock's
  name. `link` fails when the name exists and is atomic on NFS (unlike `O_EXCL` before NFSv3);
  a `link` whose reply was lost and that is retried reports "exists" although it succeeded,
  which the link count of the temporary file tells apart. A file system without hard links
  falls back to `O_CREAT | O_EXCL`.
- **Holding it**: a daemon thread rewrites the heartbeat in place every `heartbeat` seconds
  (same length, one write, fsync: a reader never sees a half record) through the file
  descriptor of the owner's own file, so it can never write into a lock that replaced it.
- **Stale**: the owner runs on this machine (same host name, boot and pid namespace) and its
  pid is gone (or is a zombie, or was reused: the start time differs); or, for an owner on any
  host, its heartbeat is older than `stale_after` (an owner on this machine whose process
  lives keeps its lock however old its heartbeat: a stopped `^Z` process is not dead). Across
  hosts this compares the owner's clock with ours: cluster nodes keep their clocks in step
  (NTP) to well within the default 60 s.
- **Taking over** a stale lock is race-safe: the taker renames the lock file to a name of its
  own, then reads what it moved. Only if that is the very lock it judged stale (the token; the
  inode, size and time for a file without one) does it delete it and create its own; if it moved
  a lock another taker made meanwhile it links it back. Of several takers exactly one wins.
- **Letting go**: `release()`, the end of a `with` block, or interpreter exit removes the file
  (by the same rename-and-check, so a lock that was taken over is never deleted by its old
  owner). A process killed hard leaves its file behind, and it goes stale: at once for a
  process on this machine, after `stale_after` seconds otherwise.

`heartbeat` and `stale_after` default to 10 s and 60 s, or the environment's
`BUDGETLM_LOCK_HEARTBEAT` and `BUDGETLM_LOCK_STALE_AFTER` (every process sharing a lock should
use the same values; a reader also waits at least three of the owner's own heartbeat intervals).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.errors import RunBusy, UserError

HEARTBEAT_ENV = "BUDGETLM_LOCK_HEARTBEAT"
STALE_ENV = "BUDGETLM_LOCK_STALE_AFTER"
DEFAULT_HEARTBEAT = 10.0
DEFAULT_STALE_AFTER = 60.0
DEFAULT_POLL = 0.5
# The owner record is padded to its length plus this, so that every heartbeat rewrites the same
# number of bytes (a heartbeat's digits only change length in the year 2286).
_PAD = 32
# Errors of `link` that mean "no hard links here", not "the lock exists".
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


class LockBusy(RunBusy):
    """The lock is held by a live owner (non-blocking), or still was when the wait timed out."""

    def __init__(self, path: Path, owner: Owner | None, description: str) -> None:
        super().__init__(f"{path} is held by {description}")
        self.path, self.owner, self.description = path, owner, description


class LockSettingError(UserError, ValueError):
    """A heartbeat or staleness setting (argument or environment variable) that cannot work."""


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise LockSettingError(f"{name}={text!r}: expected a number of seconds") from None
    if not value > 0:
        raise LockSettingError(f"{name}={text!r}: must be positive")
    return value


def default_heartbeat() -> float:
    return _env_seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT)


def default_stale_after() -> float:
    return _env_seconds(STALE_ENV, DEFAULT_STALE_AFTER)


# -- who and where ---------------------------------------------------------------------------


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


@functools.cache
def _machine() -> dict[str, str | None]:
    """This machine as a lock record names it: host name, kernel boot and pid namespace. Two
    records with all three equal name processes that `kill(pid, 0)` here can see."""
    try:
        pidns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {
        "host": socket.gethostname(),
        "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
        "pidns": pidns,
    }


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None without."""
    text = _read_first_line(f"/proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process `pid` of this machine is alive (a zombie is not) and, given its `start`
    time in clock ticks since boot, is that process rather than a reuse of its pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return True  # cannot tell: never take a lock from a process that may live
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return start is None or started == start


# -- the owner record ------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """What a lock file says about the process that holds it (fields missing: None)."""

    pid: int | None = None
    host: str | None = None
    since: str | None = None
    token: str | None = None
    heartbeat: float | None = None  # the owner's time.time() at its last heartbeat
    heartbeat_every: float | None = None
    boot_id: str | None = None
    pidns: str | None = None
    pid_start: int | None = None
    command: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner a lock file's text names; None for an empty file; an Owner without pid
        or token for text that is no owner record."""
        if not text.strip():
            return None
        try:
            raw = json.loads(text)
        except ValueError:
            return cls(raw={"text": text[:200]})
        if not isinstance(raw, dict):
            return cls(raw={"text": text[:200]})

        def get(key: str, kind: type) -> Any:
            value = raw.get(key)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        return cls(
            pid=get("pid", int),
            host=get("host", str),
            since=get("since", str),
            token=get("token", str),
            heartbeat=get("heartbeat", float),
            heartbeat_every=get("heartbeat_every", float),
            boot_id=get("boot_id", str),
            pidns=get("pidns", str),
            pid_start=get("pid_start", int),
            command=get("command", str),
            raw=raw,
        )

    @property
    def on_this_machine(self) -> bool:
        """Same host, and (where both records say) the same boot and pid namespace: then its
        pid means a process here. Two containers with one host name differ in the others."""
        if self.pid is None or self.host != _machine()["host"]:
            return False
        mine = _machine()
        return all(
            getattr(self, key) is None or mine[key] is None or getattr(self, key) == mine[key]
            for key in ("boot_id", "pidns")
        )

    def describe(self, now: float | None = None) -> str:
        """'pid 41235 on node07 since 2025-06-01 14:02:11 +0000', with the heartbeat's age when
        `now` is given."""
        if self.pid is None and self.token is None:
            return "an unknown process (the lock file holds no owner record)"
        text = f"pid {self.pid or '?'} on {self.host or '?'} since {self.since or '?'}"
        if now is not None and self.heartbeat is not None:
            text += f" (last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago)"
        return text


def read_owner(path: str | Path) -> Owner | None:
    """The owner a lock file names (None: no file, or an empty one)."""
    try:
        return Owner.parse(Path(path).read_text(errors="replace"))
    except OSError:
        return None


# -- holding ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Hold:
    """One held lock file: its descriptor (the owner's own inode), record and heartbeat."""

    path: Path
    key: str
    fd: int
    record: dict[str, Any]
    size: int
    clock: Callable[[], float]
    pid: int = field(default_factory=os.getpid)
    count: int = 1  # re-entrant acquisitions not yet released
    lost: str | None = None  # set when another process took the lock over
    released: bool = False
    io: threading.RLock = field(default_factory=threading.RLock)  # heartbeat vs release
    stop: threading.Event = field(default_factory=threading.Event)

    def write(self) -> None:
        self.record["heartbeat"] = round(self.clock(), 3)
        os.pwrite(self.fd, _encode(self.record, self.size), 0)
        os.fsync(self.fd)

    def still_ours(self) -> bool:
        """False once the lock's name holds another owner's file (it was taken over)."""
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                return True
        except FileNotFoundError:
            return True  # nobody holds it either; a new owner's file would show up here
        owner = read_owner(self.path)
        return owner is None or owner.token == self.record["token"]

    def beat(self, every: float) -> None:
        while not self.stop.wait(every):
            with self.io:
                if self.stop.is_set() or self.pid != os.getpid():
                    return
                try:
                    if not self.still_ours():
                        owner = read_owner(self.path)
                        who = owner.describe() if owner else "another process"
                        self.lost = f"{self.path} was taken over by {who}"
                        print(
                            f"warning: lost the lock {self.path}: {who} took it over (this "
                            "process's heartbeat looked stale: was it stopped or cut off?)",
                            file=sys.stderr,
                        )
                        return
                    self.write()
                except OSError:
                    continue  # a file-server hiccup: the next beat tries again

    def let_go(self) -> None:
        """Remove the lock file if it is still ours; idempotent; only in the owning process."""
        if self.pid != os.getpid():  # a forked child: its copy of `io` may be held forever
            return
        with self.io:
            if self.released:
                return
            self.released = True
            self.stop.set()
            try:
                if self.lost is None:
                    _remove_if(self.path, self.record["token"], None)
            finally:
                with contextlib.suppress(OSError):
                    os.close(self.fd)


def _encode(record: dict[str, Any], size: int = 0) -> bytes:
    data = (json.dumps(record) + "\n").encode()
    return data.ljust(size, b" ") if size else data


_GUARD = threading.RLock()  # the registries; RLock: a GC finalizer may release inside
_REENTRANT: dict[str, _Hold] = {}  # key -> this process's re-entrant hold
_LIVE: dict[int, _Hold] = {}  # every hold of this process, let go at exit


@atexit.register
def _release_all() -> None:
    with _GUARD:
        holds = list(_LIVE.values())
    for hold in holds:
        hold.let_go()


def _forget_in_child() -> None:
    """A forked child holds none of its parent's locks, and a registry lock that another thread
    held at the fork would stay held in the child forever."""
    global _GUARD
    _GUARD = threading.RLock()
    _LIVE.clear()
    _REENTRANT.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _remove_if(path: Path, token: str | None, stat: os.stat_result | None) -> bool:
    """Remove the lock file at `path` if it is the one named by `token` (or, for a file without
    a token, by its inode, size and modification time in `stat`). Race-safe: the file is first
    renamed to a name of our own, checked there, and linked back if it was not the one."""
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        if token is not None:
            moved = read_owner(aside)
            same = moved is not None and moved.token == token
        else:
            now = os.stat(aside)
            same = stat is not None and (now.st_ino, now.st_size, now.st_mtime_ns) == (
                stat.st_ino,
                stat.st_size,
                stat.st_mtime_ns,
            )
        if not same:
            # A lock another process made meanwhile: put it back. If yet another one was made in
            # the moment it was away, the one we moved is lost; its owner's heartbeat notices.
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        return same
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)


class SharedLock:
    """An exclusive lock file on a (possibly shared) file system; see the module's notes.

    `acquire(blocking=True, timeout=None)` waits for a live owner (`timeout` seconds at most,
    then LockBusy); `acquire(blocking=False)` raises LockBusy at once. Either takes a stale lock
    over: `took_over` then describes its owner and why it was stale. `with SharedLock(p):`
    acquires (blocking) and releases. `reentrant=True`: a process that holds the lock acquires it
    again without waiting, and the file goes with its last release (per process: a forked child
    does not inherit the right). `clock` (wall time, seconds) is for tests."""

    def __init__(
        self,
        path: str | Path,
        *,
        heartbeat: float | None = None,
        stale_after: float | None = None,
        reentrant: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.heartbeat = default_heartbeat() if heartbeat is None else float(heartbeat)
        self.stale_after = default_stale_after() if stale_after is None else float(stale_after)
        if not 0 < self.heartbeat < self.stale_after:
            raise LockSettingError(
                f"lock heartbeat {self.heartbeat:g} s and staleness limit {self.stale_after:g} s: "
                "the heartbeat must be positive and shorter than the limit (e.g. 10 s and 60 s)"
            )
        self.reentrant, self.clock = reentrant, clock
        self.took_over: str | None = None  # "<owner>: <why it was stale>"
        self.previous: Owner | None = None  # the owner of the stale lock taken over
        self._hold: _Hold | None = None

    # -- public ----------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        hold = self._hold
        return hold is not None and not hold.released and hold.pid == os.getpid()

    @property
    def lost(self) -> str | None:
        """Why this process no longer holds the lock it took (None while it does)."""
        return None if self._hold is None else self._hold.lost

    def acquire(
        self,
        blocking: bool = True,
        timeout: float | None = None,
        poll: float = DEFAULT_POLL,
        on_wait: Callable[[str], None] | None = None,
    ) -> SharedLock:
        """Take the lock (see the class); `on_wait(owner)` is called once when a wait begins."""
        if self.held:
            raise RuntimeError(f"{self.path}: this SharedLock is already held; make another")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.join(os.path.realpath(self.path.parent), self.path.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = False
        while True:
            with _GUARD if self.reentrant else contextlib.nullcontext():
                hold = _REENTRANT.get(key) if self.reentrant else None
                if hold is not None and hold.pid == os.getpid() and not hold.released:
                    hold.count += 1
                    self._hold = hold
                    return self
                found = self._attempt(key)
                if isinstance(found, _Hold):
                    self._start(found)
                    return self
            owner = found
            description = "another process (starting up)" if owner is None else None
            description = description or owner.describe(self.clock())
            left = None if deadline is None else deadline - time.monotonic()
            if not blocking or (left is not None and left <= 0):
                raise LockBusy(self.path, owner, description)
            if not waiting and on_wait is not None:
                on_wait(description)
            waiting = True
            time.sleep(poll if left is None else max(0.0, min(poll, left)))

    def release(self) -> None:
        """Let go (idempotent). A re-entrant lock's file goes with the last release."""
        hold, self._hold = self._hold, None
        if hold is None or hold.pid != os.getpid():
            return
        with _GUARD:
            hold.count -= 1
            if hold.count > 0:
                return
            _LIVE.pop(id(hold), None)
            if _REENTRANT.get(hold.key) is hold:
                del _REENTRANT[hold.key]
        hold.let_go()

    def __enter__(self) -> SharedLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- taking ----------------------------------------------------------------------------
    def _attempt(self, key: str) -> _Hold | Owner | None:
        """One try: create the lock, or take it over if stale. Returns the hold, or the live
        owner (None: a file that names nobody yet, being written)."""
        owner: Owner | None = None
        stale: tuple[Owner | None, str] | None = None
        for _ in range(20):  # each round is a race lost to another process; never a wait
            hold = self._create(key)
            if hold is not None:
                if stale is not None and stale[0] is not None:  # an empty file: no holder
                    self.previous, why = stale
                    self.took_over = f"{self.previous.describe()}: {why}"
                return hold
            try:
                stat = os.stat(self.path)
                text = self.path.read_text(errors="replace")
            except FileNotFoundError:
                continue  # released meanwhile: try again
            owner = Owner.parse(text)
            why = self._stale_because(owner, stat)
            if why is None:
                return owner
            # Whoever of several takers removes it, the one that then creates the lock reports
            # the stale owner it saw.
            stale = (owner, why)
            self._remove_stale(owner.token if owner is not None else None, stat)
        return owner

    def _remove_stale(self, token: str | None, stat: os.stat_result) -> None:
        """Remove the lock file judged stale (its `token`, or its `stat` for a file without
        one), holding the take-over guard `<lock>.takeover` (created exclusively): one taker at
        a time moves the lock file, and only the file it judged. Without the guard, a taker that
        judged the old file could move aside the lock another taker had just made, leaving the
        name free for a moment for a third to take as well: two holders. A taker waits while
        another holds the guard (a rename and a read); a guard left by a taker that died is
        removed once older than the staleness limit."""
        guard = self.path.with_name(f"{self.path.name}.takeover")
        while True:  # another taker holds the guard for a rename and a read: wait for it
            try:
                fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                os.close(fd)
                break
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.stat(guard).st_mtime > self.stale_after:
                        os.unlink(guard)
                time.sleep(0.01)
        try:
            try:
                now = os.stat(self.path)
                owner = Owner.parse(self.path.read_text(errors="replace"))
            except FileNotFoundError:
                return
            still = (
                owner is not None and owner.token == token
                if token is not None
                else (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
            )
            if still:
                _remove_if(self.path, token, None if token else stat)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(guard)

    def _stale_because(self, owner: Owner | None, stat: os.stat_result) -> str | None:
        """Why the lock `owner` holds is stale, or None while it may be live."""
        now = self.clock()
        if owner is None:  # empty: being created without hard links, or left by an old budgetlm
            if now - stat.st_mtime > self.heartbeat:
                return "its lock file names no holder"
            return None
        if owner.on_this_machine:
            if pid_alive(owner.pid, owner.pid_start):  # type: ignore[arg-type]
                return None
            return "that process is gone without releasing it (killed or crashed)"
        beat = owner.heartbeat if owner.heartbeat is not None else stat.st_mtime
        limit = max(self.stale_after, 3 * (owner.heartbeat_every or 0.0))
        age = now - beat
        if age <= limit:
            return None
        if owner.pid is None and owner.token is None:
            return f"its lock file holds no owner record and is {age:.0f} s old"
        return (
            f"its last heartbeat was {age:.0f} s ago (stale after {limit:.0f} s): it was killed "
            "or crashed, or its host is down or cut off"
        )

    def _create(self, key: str) -> _Hold | None:
        """Create the lock file with our record; None when it exists."""
        me = _machine()
        record: dict[str, Any] = {
            "pid": os.getpid(),
            "host": me["host"],
            "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv)[:500],
            "token": uuid.uuid4().hex,
            "boot_id": me["boot_id"],
            "pidns": me["pidns"],
            "pid_start": (_proc_stat(os.getpid()) or (None, None))[1],
            "heartbeat_every": self.heartbeat,
            "heartbeat": round(self.clock(), 3),
        }
        data = _encode(record)
        size = len(data) + _PAD
        data = data.ljust(size, b" ")
        tmp = self.path.with_name(f"{self.path.name}.{record['token']}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        won = False
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            try:
                os.link(tmp, self.path)
                won = True
            except FileExistsError:
                won = os.fstat(fd).st_nlink >= 2  # NFS: a retried link whose reply was lost
            except OSError as e:
                if e.errno not in _NO_LINKS:
                    raise
                os.close(fd)
                fd = -1
                fd, won = self._create_exclusive(data)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not won:
            if fd >= 0:
                os.close(fd)
            return None
        return _Hold(self.path, key, fd, record, size, self.clock)

    def _create_exclusive(self, data: bytes) -> tuple[int, bool]:
        """No hard links on this file system: O_EXCL (atomic on local disks and NFSv3+). A
        reader may see the file empty for a moment: an empty file younger than a heartbeat
        interval counts as an owner starting up."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return -1, False
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        return fd, True

    def _start(self, hold: _Hold) -> None:
        """Register a new hold (under _GUARD) and start its heartbeat."""
        with _GUARD:
            _LIVE[id(hold)] = hold
            if self.reentrant:
                _REENTRANT[hold.key] = hold
        self._hold = hold
        threading.Thread(
            target=hold.beat,
            args=(self.heartbeat,),
            daemon=True,
            name=f"lock-heartbeat:{self.path.name}",
        ).start()
