"""`mma bench`: what a training step and an attack cost, measured in one process.

``harness`` times (interleaved rounds, medians, ratios against targets, the table);
``cases`` says what is timed.  Nothing is written to disk except the JSON asked for
(MNIST is read from ``data_root`` when prepared there, else prepared into a
temporary folder that is deleted afterwards).

    python -m mma.bench --quick --threads 1 --json bench.json
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from .cases import (
    FULL,
    QUICK,
    Settings,
    accuracy,
    bench_pgd_vs_torchattacks,
    bench_restarts,
    bench_robust_job,
    bench_switches,
    bench_train_steps,
    mnist,
    pretrain,
)
from .harness import TARGETS, format_table, interleaved, machine, met, paired_ratios, ratios, summary

__all__ = [
    "FULL",
    "QUICK",
    "TARGETS",
    "Settings",
    "accuracy",
    "format_table",
    "interleaved",
    "machine",
    "main",
    "met",
    "mnist",
    "paired_ratios",
    "pretrain",
    "ratios",
    "run",
    "summary",
]


# --------------------------------------------------------------------------- entry point
def run(
    *,
    quick: bool,
    device: str,
    json_path: Path | None,
    data_root: str | os.PathLike = "data",
    settings: Optional[Settings] = None,
    threads: Optional[int] = None,
    show: bool = True,
) -> dict:
    """Run the benchmark; print the table (``show``) and write ``json_path`` if given.

    Returns the results: per-case times (median, min, max, raw), ``ratios`` (the keys
    of ``TARGETS`` plus ``pgd_over_std_step``), the same ratios at the top level,
    ``targets_met``, the machine and the settings.  ``settings`` replaces the quick /
    full presets (tests use tiny ones).  ``threads``: torch intra-op threads for the
    run (None: as set, e.g. by OMP_NUM_THREADS; on a shared 2-core machine 1 is both
    faster and steadier, see docs/performance.md); restored afterwards.
    """
    s = settings or (QUICK if quick else FULL)
    dev = torch.device(device)
    before_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(quick, dev, json_path, data_root, s, show)
    finally:
        torch.set_num_threads(before_threads)


def _run(quick: bool, dev: torch.device, json_path: Path | None, data_root, s: Settings, show: bool) -> dict:
    from ..io import write_json

    t0 = time.perf_counter()
    res: dict = {"quick": quick, "settings": asdict(s), "machine": machine(dev)}
    say = (
        (lambda msg: print(f"[bench {time.perf_counter() - t0:5.0f}s] {msg}", file=sys.stderr, flush=True))
        if show
        else (lambda msg: None)
    )
    with mnist(data_root) as data:
        say("pre-training LeNet5-Madry")
        model, res["pretrain"] = pretrain(data, s, dev)
        say(f"training steps ({s.warmup}+{s.rounds} rounds)")
        res["train"] = bench_train_steps(model, data, s, dev)
        say("our PGD vs torchattacks")
        res["attack"] = bench_pgd_vs_torchattacks(model, data, s, dev)
        say("robust-accuracy job: ours vs torchattacks")
        res["job"] = bench_robust_job(model, data, s, dev)
        say("naive vs early-exit restarts")
        res["restarts"] = bench_restarts(model, data, s, dev)
        if s.switches:
            say("switches")
            res["switches"] = bench_switches(model, data, s, dev)
    res["ratios"] = ratios(res)
    res["paired_ratios"] = paired_ratios(res)
    res.update(res["ratios"])
    res["targets_met"] = {k: met(res["ratios"][k], t, d) for k, t, d in TARGETS if k in res["ratios"]}
    res["seconds"] = time.perf_counter() - t0
    res["table"] = format_table(res)
    if show:
        print(res["table"])
        print(f"\n(whole run {res['seconds']:.0f} s)")
    if json_path is not None:
        write_json(json_path, res)
    return res


def main(argv: Optional[list[str]] = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mma.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the short run (under ~5 minutes on 2 CPU cores)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results to FILE")
    ap.add_argument("--data-root", default="data", help="a prepared dataset root (else a temporary copy)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: as set)")
    a = ap.parse_args(argv)
    run(quick=a.quick, device=a.device, json_path=a.json, data_root=a.data_root, threads=a.threads)


if __name__ == "__main__":
    main()
