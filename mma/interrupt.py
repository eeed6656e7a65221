"""SIGTERM handled like Ctrl-C: a scheduler's stop ends a stage cleanly.

SLURM's ``scancel`` and a job's time limit send SIGTERM, then SIGKILL ``KillWait``
seconds later (30 s by default); ``kill`` and container runtimes do the same.  While a
stage runs (:func:`mma.tracking.stage_run` installs :func:`on_sigterm`), SIGTERM raises
:class:`Terminated`, a ``KeyboardInterrupt``, so the stage's MLflow run ends KILLED as
after Ctrl-C, and the command exits with 143 (128 + SIGTERM).

Training defers it (:func:`deferred`): the signal only sets a flag, and the training
loop, at the end of the step in progress, writes its resume checkpoint (flushing the
metrics up to that step) and raises :class:`Terminated` itself.  The rerun — Snakemake's
``--retries``, or the user's — resumes from that checkpoint in the same MLflow run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_CODE = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM)."""


_state = {"deferred": 0, "requested": False}


def _handler(signum, frame) -> None:
    _state["requested"] = True
    if not _state["deferred"]:
        raise Terminated("stopped by SIGTERM")


def requested() -> bool:
    """True once SIGTERM arrived (polled by code that stops at a safe point)."""
    return _state["requested"]


@contextlib.contextmanager
def on_sigterm() -> Iterator[None]:
    """Inside: SIGTERM raises :class:`Terminated` (or sets the flag, inside :func:`deferred`)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, _handler)
    _state["requested"] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _state["requested"] = False  # handled here: code run later in this process must not see it


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside: SIGTERM only sets the flag, for code that stops at a safe point (the training
    loop checkpoints first).  A request still pending on the way out is raised then."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1
    if _state["requested"] and not _state["deferred"]:
        raise Terminated("stopped by SIGTERM")
