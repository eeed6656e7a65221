"""Progress with ETA for long loops: a rich bar on a terminal; on a pipe or log
file, a plain line every ~10 % (so `dvc repro` / snakemake logs still show ETA)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator


@contextlib.contextmanager
def progress(total: int, description: str, *, start: int = 0, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1, **fields)``; fields (e.g. loss=0.3) are shown beside the bar."""
    if not enabled or total <= 0:
        yield lambda n=1, **fields: None
        return
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(description, total=total, completed=start, info="")

            def advance(n: int = 1, **fields) -> None:
                if not fields:  # keep the last fields shown (the loop reports them every log_every steps)
                    bar.update(task, advance=n)
                    return
                info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
                bar.update(task, advance=n, info=info)

            yield advance
        return

    state = {"done": start, "next": start + max(1, total // 10), "t0": time.monotonic(), "start": start}

    def advance(n: int = 1, **fields) -> None:
        state["done"] += n
        if state["done"] >= state["next"] or state["done"] >= total:
            elapsed = time.monotonic() - state["t0"]
            rate = (state["done"] - state["start"]) / max(elapsed, 1e-9)
            eta = (total - state["done"]) / rate if rate > 0 else float("nan")
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            print(
                f"{description}: {state['done']}/{total} elapsed {elapsed:.0f}s eta {eta:.0f}s {info}",
                file=sys.stderr,
                flush=True,
            )
            state["next"] = state["done"] + max(1, total // 10)

    yield advance
