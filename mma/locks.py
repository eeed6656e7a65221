"""Lock files (``flock``): opened without following a link, written only when they are ours,
waited on for a bounded time, their holder named when the wait runs out.

A lock file is a plain file this package creates; a symbolic link, a hard link or a file
with other content where a lock file should be is refused (``LockFileError``), never
written through or truncated.  A wait ends once the lock has been idle for ``WAIT_S``
seconds: the same holder(s), doing nothing (asleep, stopped by Ctrl-Z, stuck: under
``BUSY`` of a CPU by /proc; a holder that cannot be seen counts as idle); and after
``MAX_WAIT_S`` whatever happens.  A lock in use is waited for: 8 parallel jobs opening a
fresh MLflow store (the first writing its schema, ~7 s) held its lock in turns for 22 s on
a busy 2-core machine (measured).  The error names the holder from Linux's /proc/locks
(pid, command line, whether stopped).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
from pathlib import Path

from .io import BadFileError

WAIT_S = 20.0  # seconds a holder may do nothing before a waiter gives up (a write holds a lock for milliseconds)
MAX_WAIT_S = 600.0  # seconds a waiter waits at most, even for a holder that works
BUSY = 0.05  # the share of a CPU a holder that works uses at least (one asleep, polling or stopped: less)
WHAT_TO_DO = "wait for that process to finish (resume a stopped one with `fg`, or end it), then rerun"
RECORD_PREFIX = "pid "  # what ``write_holder`` writes; any other content is not ours to truncate


class LockFileError(BadFileError):
    """Something that is not a lock file of ours sits where one should be."""


class LockTimeout(Exception):
    """The lock stayed held for the whole bounded wait; the message names its holder and why
    the wait ended ("pid 12 (...), idle for 20 s")."""


def open_lock(path: str | os.PathLike) -> int:
    """A file descriptor of lock file ``path``, created if absent (mode 0666 less the umask).
    LockFileError if ``path`` is a symbolic link, not a plain file, or a plain file with
    other links (a hard link to someone's file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LockFileError(
                f"{path}: is a symbolic link where a lock file belongs (nothing was written "
                "through it); remove the link, then rerun"
            ) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a plain file" if not stat.S_ISREG(info.st_mode) else f"a file with {info.st_nlink} links"
        raise LockFileError(
            f"{path}: is {what} where a lock file belongs (nothing was written to it); remove it, then rerun"
        )
    return fd


def acquire(fd: int, path: str | os.PathLike, *, shared: bool = False, wait_s: float = 0.0) -> None:
    """flock ``fd`` (exclusive, or ``shared``), waiting in windows of ``wait_s`` seconds: another
    window only if the lock was in use in this one (``_worked``), MAX_WAIT_S in all; then
    LockTimeout naming the holder(s) of ``path`` and why.  ``wait_s=0``: one try."""
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    start, window_end, ticks, delay, why = time.monotonic(), 0.0, None, 0.005, None
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError:
            if why is not None:  # refused again after the holder was judged (it may have just exited)
                raise LockTimeout(holders(path) + why) from None
        now = time.monotonic()
        if ticks is None:  # the first refusal opens the first window
            window_end, ticks = now + wait_s, _cpu_ticks(path)
        if now >= window_end:
            done = _cpu_ticks(path)
            if wait_s <= 0:
                why = ""
            elif now - start >= MAX_WAIT_S:
                why = f", working for over {MAX_WAIT_S:.0f} s"
            elif not _worked(ticks, done, wait_s):
                why = f", idle for {wait_s:.0f} s"
            window_end, ticks = now + wait_s, done  # the lock is in use: wait on
            continue  # one more try (at once) before giving up
        time.sleep(min(delay, window_end - now))
        delay = min(2 * delay, 0.2)


def write_holder(fd: int, path: str | os.PathLike) -> None:
    """Record this process in the (exclusively held) lock file, replacing an earlier record of
    ours; LockFileError if the file holds anything else (it was not made by this package)."""
    old = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    if old and not old.startswith(RECORD_PREFIX):
        raise LockFileError(
            f"{path}: holds something other than a lock record ({old[:40]!r}…; nothing was "
            "changed); move it away, then rerun"
        )
    record = f"{RECORD_PREFIX}{os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)


def read_holder(fd: int) -> str:
    """The record ``write_holder`` left ("" if none)."""
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    return text if text.startswith(RECORD_PREFIX) else ""


def holders(path: str | os.PathLike) -> str:
    """Who holds a flock on ``path``: "pid 123 (python -c ..., stopped (Ctrl-Z?))"; "another
    process" where that cannot be told (not Linux, another machine over NFS)."""
    return ", ".join(_process(pid) for pid in _holder_pids(path)) or "another process"


def _holder_pids(path: str | os.PathLike) -> list[int]:
    """The processes holding a flock on ``path``, from Linux's /proc/locks ([] if unknown)."""
    try:
        info = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
    exact, same_inode = [], []  # an overlay file system reports the lower device: the inode alone then
    for line in lines:
        fields = line.split()  # "1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF" ("1: -> FLOCK ...": a waiter)
        if (
            len(fields) >= 6
            and fields[1] == "FLOCK"
            and fields[4].isdigit()
            and fields[5].rsplit(":", 1)[-1] == str(info.st_ino)
        ):
            (exact if fields[5].rsplit(":", 1)[0] == device else same_inode).append(int(fields[4]))
    return list(dict.fromkeys(exact or same_inode))


def _cpu_ticks(path: str | os.PathLike) -> dict[int, int]:
    """{pid: CPU time used so far (clock ticks, user + system)} of the holders of ``path`` ({} if
    none can be seen).  A stopped (Ctrl-Z) process counts 0: whatever it used, it does nothing now."""
    ticks = {}
    for pid in _holder_pids(path):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks[pid] = 0 if fields[0] in "tT" else int(fields[11]) + int(fields[12])  # state, utime, stime
    return ticks


def _worked(before: dict[int, int], after: dict[int, int], seconds: float) -> bool:
    """Whether the lock was in use over ``seconds``: it changed hands (parallel jobs taking turns),
    or its holders used BUSY of a CPU."""
    if set(before) != set(after):
        return True
    return sum(after[pid] - before[pid] for pid in after) >= BUSY * seconds * os.sysconf("SC_CLK_TCK")


def _process(pid: int) -> str:
    """ "pid 123 (its command line[, stopped])" from /proc; "pid 123" if it cannot be read."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        stat_text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return f"pid {pid}"
    state = stat_text[stat_text.rindex(")") + 2 :].split()[0]
    stopped = ", stopped (Ctrl-Z?)" if state in "tT" else ""
    return f"pid {pid} ({' '.join(argv.split())[:80]}{stopped})"
