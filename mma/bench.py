"""`mma bench`: what a training step and an attack cost, measured in one process.

Reads top to bottom: data → a briefly pre-trained LeNet5-Madry (plain training to
~96 % test accuracy, so ~94 % of a batch is attacked, as in issue 5) → training
steps (STD, PGD-40, MMA-40 at batch 50 and 128; PGD-10, MMA-10) → our PGD against
torchattacks.PGD (fixed steps, batch 128) → naive against early-exit 50-restart
white-box PGD at a large and a small ε → the GPU-ready switches (threads,
channels_last, bf16 autocast) → one table of medians and ratios against their
targets, and optionally JSON.

Every comparison is interleaved: each round runs every case once, in a rotated
order, after untimed warm-up rounds, and a case's number is the median over
rounds with its min–max beside it.  On a shared machine only ratios measured
this way mean anything.  Nothing is written to disk except the JSON asked for
(MNIST is read from ``data_root`` when prepared there, else prepared into a
temporary folder that is deleted afterwards).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (key, target, direction): ">=" means the measured ratio must be at least the target
TARGETS: list[tuple[str, float, str]] = [
    ("mma_over_pgd_step", 1.03, "<="),  # MMA-40 / PGD-40 training step time, batch 50
    ("mma_over_pgd_step_b128", 1.03, "<="),  # the same at batch 128 (reported; the target is judged at 50)
    ("mma10_over_pgd10_step", 1.15, "<="),  # MMA-10 / PGD-10 (the CIFAR10 setting)
    ("pgd_over_torchattacks", 1.0, ">="),  # our PGD throughput / torchattacks.PGD's
    ("restart_speedup", 5.0, ">="),  # naive / early-exit 50-restart PGD time, ≤ 20 % survive restart 1
    ("restart_speedup_most_survive", 0.98, ">="),  # the same where most examples survive
]


@dataclass(frozen=True)
class Settings:
    """How much to measure.  ``QUICK`` keeps the whole run under ~5 minutes on 2 CPU cores."""

    rounds: int = 7  # timed interleaved rounds per comparison (medians over these)
    warmup: int = 1  # untimed rounds before them
    pretrain_acc: float = 0.96  # plain training stops at this test accuracy...
    pretrain_max_steps: int = 2000  # ...or after this many steps (batch 50, Adam 1e-3)
    pretrain_eval: int = 1000  # test images for that accuracy
    train_steps: tuple[int, int] = (40, 10)  # attack steps of the training-step comparisons
    train_batches: tuple[int, ...] = (50, 128)  # batch sizes of the first (40-step) comparison
    attack_batch: int = 128  # our PGD vs torchattacks: batch, steps
    attack_steps: int = 100
    restart_examples: int = 32  # naive vs early-exit restarts: test images,
    restarts: int = 50  # restarts and steps per restart
    restart_steps: int = 10
    eps_large: float = 0.2  # ≤ 20 % of the pre-trained model survives one restart here
    eps_small: float = 0.05  # most (~90 %) survive here
    warm_store: bool = True  # also time MMA with a filled ε store (a later epoch)
    switches: bool = True  # measure threads / channels_last / bf16 autocast
    switch_images: int = 500  # test images for bf16 autocast's robust accuracy


FULL = Settings()
# quick: batch 50 only, 25 attack steps, a smaller restart problem (still 50 restarts)
QUICK = Settings(rounds=5, pretrain_max_steps=1000, train_batches=(50,), attack_steps=25, restart_examples=24,
                 restart_steps=5, warm_store=False, switch_images=200)


# --------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(cases: dict[str, Callable[[], object]], *, rounds: int, warmup: int,
                device: torch.device | str = "cpu",
                before: Optional[Callable[[str, int], None]] = None) -> dict[str, list[float]]:
    """Seconds per call of each case, ``rounds`` times, the cases interleaved.

    Round r runs the cases in an order rotated by r (no case always runs first or
    after the same neighbour); ``before(name)`` runs untimed before each call (e.g.
    to restore the weights).  Warm-up rounds are run and discarded.
    """
    device = torch.device(device)
    names = list(cases)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if before:
                before(name, r)
            _sync(device)
            t0 = time.perf_counter()
            cases[name]()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# --------------------------------------------------------------------------- data and model
@contextlib.contextmanager
def mnist(data_root: str | os.PathLike) -> Iterator[dict[str, Tensor]]:
    """Real MNIST as uint8 tensors: from ``data_root`` if prepared there, else prepared
    (from $MMA_DATA_SOURCE, or downloaded) into a temporary folder deleted on exit."""
    from .data import DataError, load_split, prepare_mnist

    def load(root) -> dict[str, Tensor]:
        x_tr, y_tr = load_split("mnist", root, "train")
        x_te, y_te = load_split("mnist", root, "test")
        return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}

    try:
        yield load(data_root)
        return
    except DataError:
        pass
    with tempfile.TemporaryDirectory(prefix="mma-bench-") as tmp:
        prepare_mnist(tmp, os.environ.get("MMA_DATA_SOURCE"), verify=False)
        yield load(tmp)


def pretrain(data: dict[str, Tensor], s: Settings, device: torch.device, seed: int = 0) -> tuple[nn.Module, dict]:
    """LeNet5-Madry by plain training (Adam 1e-3, batch 50) until ``s.pretrain_acc`` test accuracy."""
    from .data import TensorBatcher, to_float
    from .models import LeNet5Madry

    torch.manual_seed(seed)
    model = LeNet5Madry().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batcher = TensorBatcher(data["x_train"], data["y_train"], 50, seed=seed, device=device)
    x_te = to_float(data["x_test"][: s.pretrain_eval], device)
    y_te = data["y_test"][: s.pretrain_eval].to(device)
    t0, acc, step = time.perf_counter(), 0.0, 0
    while step < s.pretrain_max_steps:
        x, y, _ = batcher.batch(step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            acc = accuracy(model, x_te, y_te)
            if acc >= s.pretrain_acc:
                break
    return model.eval(), {"steps": step, "test_acc": acc, "test_images": len(y_te), "seconds": time.perf_counter() - t0}


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was = model.training
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train(was)
    return acc


# --------------------------------------------------------------------------- the comparisons
def bench_train_steps(model: nn.Module, data: dict[str, Tensor], s: Settings, device: torch.device) -> dict:
    """STD, PGD and MMA training steps from the same weights, on the same batches.

    One step = the batch step (attack included) + zero_grad + backward + Adam step,
    as in the training loop.  The weights are restored (untimed) before every call,
    so every measurement starts from the pre-trained model; each case keeps its own
    optimiser and, for MMA, its own ε store (first epoch: every ε is eps_min).
    "mma…-warm" is MMA with the ε store of a later epoch (each example's ε found by
    an untimed pass with the same weights just before: a best case, since in
    training the weights have moved in between).
    """
    from .data import TensorBatcher
    from .config.model import MMATrainSpec, PGDTrainSpec
    from .train.mma import MMAStep
    from .train.steps import PGDStep, StdStep

    start = {k: v.clone() for k, v in model.state_dict().items()}
    n_train = len(data["x_train"])
    batchers = {b: TensorBatcher(data["x_train"], data["y_train"], b, seed=1, device=device) for b in set(s.train_batches) | {50}}
    specs: dict[str, tuple[object, int]] = {"std-b50": (StdStep(), 50)}
    main, short = s.train_steps
    for steps in (main, short):
        for b in (s.train_batches if steps == main else (50,)):
            specs[f"pgd{steps}-b{b}"] = (PGDStep(PGDTrainSpec(eps=0.3, steps=steps), "linf", 10**9), b)
            specs[f"mma{steps}-b{b}"] = (MMAStep(MMATrainSpec(steps=steps), "linf", n_train, device=device), b)
    if s.warm_store:  # the ε store of a later epoch: filled by an untimed pass over the same batch first
        specs[f"mma{main}-b50-warm"] = (MMAStep(MMATrainSpec(steps=main), "linf", n_train, device=device), 50)
    opts = {k: torch.optim.Adam(model.parameters(), lr=1e-4) for k in specs}
    state = {"round": 0}
    frac_attacked: list[float] = []

    def case(name: str):
        step_fn, b = specs[name]

        def call():
            x, y, idx = batchers[b].batch(state["round"])  # the same batches for every case
            loss, metrics = step_fn(model, x, y, idx, 0)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if name == f"mma{main}-b50":
                frac_attacked.append(metrics["frac_correct"])
        return call

    def before(name: str, r: int) -> None:
        model.load_state_dict(start)
        state["round"] = r
        if name.endswith("-warm"):
            step_fn, b = specs[name]
            x, y, idx = batchers[b].batch(r)
            step_fn(model, x, y, idx, 0)  # stores each example's ε (no weight update)

    names = list(specs)
    model.train()
    times = interleaved({k: case(k) for k in names}, rounds=s.rounds, warmup=s.warmup, device=device, before=before)
    model.load_state_dict(start)
    model.eval()
    return {"times": {k: summary(v) for k, v in times.items()}, "raw": times,
            "frac_attacked": statistics.mean(frac_attacked) if frac_attacked else float("nan")}


def bench_pgd_vs_torchattacks(model: nn.Module, data: dict[str, Tensor], s: Settings, device: torch.device) -> dict:
    """Linf PGD, ε = 0.3, step 0.01, random start, CE, fixed steps, eval mode: ours
    (select="loss", which has no early exit) against torchattacks.PGD."""
    import torchattacks

    from .attacks import pgd
    from .data import to_float

    x = to_float(data["x_test"][: s.attack_batch], device)
    y = data["y_test"][: s.attack_batch].to(device)
    theirs = torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=s.attack_steps, random_start=True)
    cases = {
        "ours": lambda: pgd(model, x, y, 0.3, steps=s.attack_steps, step_size=0.01, loss="ce", select="loss"),
        "torchattacks": lambda: theirs(x, y),
    }
    model.eval()
    times = interleaved(cases, rounds=s.rounds, warmup=s.warmup, device=device)
    torch.manual_seed(0)
    acc_ours = accuracy(model, cases["ours"](), y)
    torch.manual_seed(0)
    acc_theirs = accuracy(model, cases["torchattacks"](), y)
    return {"times": {k: summary(v) for k, v in times.items()}, "raw": times,
            "examples_per_s": {k: s.attack_batch / statistics.median(v) for k, v in times.items()},
            "robust_acc": {"ours": acc_ours, "torchattacks": acc_theirs}, "batch": s.attack_batch, "steps": s.attack_steps}


def bench_restarts(model: nn.Module, data: dict[str, Tensor], s: Settings, device: torch.device) -> dict:
    """White-box PGD with ``s.restarts`` restarts (select="target"), naive against early
    exit, at a large ε (few survive) and a small one (most survive).  Both runs start
    from the same seed and must give the same robust accuracy (asserted)."""
    from .attacks import pgd
    from .data import to_float

    x = to_float(data["x_test"][: s.restart_examples], device)
    y = data["y_test"][: s.restart_examples].to(device)
    model.eval()
    out = {}
    for label, eps in (("large", s.eps_large), ("small", s.eps_small)):
        def attack(early: bool, restarts: int = s.restarts):
            torch.manual_seed(1)
            return pgd(model, x, y, eps, steps=s.restart_steps, restarts=restarts, loss="ce", early_exit=early)

        survive_one = accuracy(model, attack(True, 1), y)
        last: dict[str, Tensor] = {}  # each case's latest x_adv (every call starts from the same seed)

        def case(name: str, early: bool):
            return lambda: last.__setitem__(name, attack(early))

        times = interleaved({"naive": case("naive", False), "early_exit": case("early_exit", True)},
                            rounds=s.rounds, warmup=s.warmup, device=device)
        acc = {k: accuracy(model, v, y) for k, v in last.items()}
        if acc["naive"] != acc["early_exit"]:
            raise AssertionError(f"early exit changed the robust accuracy at eps={eps}: {acc}")
        out[label] = {"eps": eps, "survive_first_restart": survive_one, "robust_acc": acc["naive"],
                      "times": {k: summary(v) for k, v in times.items()}, "raw": times,
                      "speedup": statistics.median(times["naive"]) / statistics.median(times["early_exit"])}
    return out


def bench_switches(model: nn.Module, data: dict[str, Tensor], s: Settings, device: torch.device) -> dict:
    """The speed switches, each against the default on the same PGD attack (batch 50,
    the training batch, 20 fixed steps): intra-op threads (CPU), channels_last
    memory format, bf16 autocast (with its effect on robust accuracy)."""
    import copy

    from .attacks import pgd
    from .data import to_float

    steps = 20
    x = to_float(data["x_test"][:50], device)
    y = data["y_test"][:50].to(device)
    x_big = to_float(data["x_test"][: s.switch_images], device)
    y_big = data["y_test"][: s.switch_images].to(device)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    amp_dtype = torch.bfloat16

    def run_pgd(m, xx, amp=False, xs=None, ys=None):
        xs = xx if xs is None else xs
        ys = y if ys is None else ys
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            return pgd(m, xs, ys, 0.1, steps=steps, loss="ce", select="loss")

    cases = {"default": lambda: run_pgd(model, x), "channels_last": lambda: run_pgd(cl_model, x_cl),
             "bf16_autocast": lambda: run_pgd(model, x, amp=True)}
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else min(2, os.cpu_count() or 1)
    if device.type == "cpu" and other != threads:
        def other_threads():
            torch.set_num_threads(other)
            try:
                run_pgd(model, x)
            finally:
                torch.set_num_threads(threads)
        cases[f"threads={other}"] = other_threads
    model.eval()
    times = interleaved(cases, rounds=s.rounds, warmup=s.warmup, device=device)
    base = statistics.median(times["default"])
    torch.manual_seed(2)
    acc_fp32 = accuracy(model, run_pgd(model, x, xs=x_big, ys=y_big), y_big)
    torch.manual_seed(2)
    acc_bf16 = accuracy(model, run_pgd(model, x, amp=True, xs=x_big, ys=y_big), y_big)
    return {"times": {k: summary(v) for k, v in times.items()}, "raw": times, "threads": threads,
            "speedup_vs_default": {k: base / statistics.median(v) for k, v in times.items()},
            "bf16_robust_acc": {"fp32": acc_fp32, "bf16_autocast": acc_bf16, "eps": 0.1, "steps": steps,
                                "images": len(y_big)}}


# --------------------------------------------------------------------------- report
def ratios(res: dict) -> dict[str, float]:
    t = {k: v["median"] for k, v in res["train"]["times"].items()}
    main, short = res["settings"]["train_steps"]
    out = {
        "mma_over_pgd_step": t[f"mma{main}-b50"] / t[f"pgd{main}-b50"],
        "mma10_over_pgd10_step": t[f"mma{short}-b50"] / t[f"pgd{short}-b50"],
        "pgd_over_std_step": t[f"pgd{main}-b50"] / t["std-b50"],
        "pgd_over_torchattacks": res["attack"]["times"]["torchattacks"]["median"] / res["attack"]["times"]["ours"]["median"],
        "restart_speedup": res["restarts"]["large"]["speedup"],
        "restart_speedup_most_survive": res["restarts"]["small"]["speedup"],
    }
    if f"mma{main}-b50-warm" in t:
        out["mma_over_pgd_step_warm"] = t[f"mma{main}-b50-warm"] / t[f"pgd{main}-b50"]
    for b in res["settings"]["train_batches"]:
        if b != 50:
            out[f"mma_over_pgd_step_b{b}"] = t[f"mma{main}-b{b}"] / t[f"pgd{main}-b{b}"]
    return out


def paired_ratios(res: dict) -> dict[str, float]:
    """The same time ratios, as the median over rounds of each round's own ratio (the two
    cases of a round ran seconds apart, so machine load cancels better)."""
    main, short = res["settings"]["train_steps"]
    raw = res["train"].get("raw", {})
    pairs = {"mma_over_pgd_step": (f"mma{main}-b50", f"pgd{main}-b50"),
             "mma10_over_pgd10_step": (f"mma{short}-b50", f"pgd{short}-b50"),
             "mma_over_pgd_step_warm": (f"mma{main}-b50-warm", f"pgd{main}-b50")}
    pairs.update({f"mma_over_pgd_step_b{b}": (f"mma{main}-b{b}", f"pgd{main}-b{b}")
                  for b in res["settings"]["train_batches"] if b != 50})
    out = {k: statistics.median(x / y for x, y in zip(raw[a], raw[b]))
           for k, (a, b) in pairs.items() if a in raw and b in raw}
    if "raw" in res["attack"]:
        at = res["attack"]["raw"]
        out["pgd_over_torchattacks"] = statistics.median(t / o for o, t in zip(at["ours"], at["torchattacks"]))
    for key, label in (("restart_speedup", "large"), ("restart_speedup_most_survive", "small")):
        rs = res["restarts"][label].get("raw")
        if rs:
            out[key] = statistics.median(nv / ev for nv, ev in zip(rs["naive"], rs["early_exit"]))
    return out


def met(value: float, target: float, direction: str) -> bool:
    return value <= target if direction == "<=" else value >= target


def format_table(res: dict) -> str:
    """The medians (min–max) of every timed case, then each ratio beside its target."""
    lines = [f"mma bench ({'quick' if res['quick'] else 'full'}) on {res['machine']['device']}: "
             f"{res['machine']['cpu']}, {res['machine']['threads']} threads, torch {res['machine']['torch']}",
             f"pre-trained LeNet5-Madry: {res['pretrain']['test_acc']:.1%} test accuracy after "
             f"{res['pretrain']['steps']} steps; MMA attacks {res['train']['frac_attacked']:.1%} of a batch",
             "", f"{'case':52s} {'median':>10s}  {'min – max':>21s}"]

    def rows(prefix: str, times: dict) -> None:
        for k, v in times.items():
            lines.append(f"{prefix + k:52s} {v['median']:9.4f}s  {v['min']:9.4f} – {v['max']:.4f}s")

    rows("train step ", res["train"]["times"])
    a = res["attack"]
    rows(f"PGD-{a['steps']} b{a['batch']} ", a["times"])
    for label, r in res["restarts"].items():
        rows(f"{res['settings']['restarts']}-restart PGD ε={r['eps']} ({r['survive_first_restart']:.0%} survive 1) ",
             r["times"])
    if res.get("switches"):
        rows("switch (PGD-20 b50) ", res["switches"]["times"])
    paired = res.get("paired_ratios", {})
    lines += ["", "ratio = ratio of the medians; paired = median over rounds of each round's ratio",
              f"{'ratio':32s} {'measured':>9s} {'paired':>8s} {'target':>9s}  met"]

    def pair(key: str) -> str:
        return f"{paired[key]:8.3f}" if key in paired else f"{'':8s}"

    for key, target, direction in TARGETS:
        if key in res["ratios"]:
            v = res["ratios"][key]
            lines.append(f"{key:32s} {v:9.3f} {pair(key)} {direction + format(target, 'g'):>9s}  "
                         f"{'yes' if met(v, target, direction) else 'NO'}")
    for key in ("mma_over_pgd_step_warm", "pgd_over_std_step"):
        if key in res["ratios"]:
            lines.append(f"{key:32s} {res['ratios'][key]:9.3f} {pair(key)} {'(info)':>9s}")
    if res.get("switches"):
        sw = res["switches"]
        lines.append("")
        lines.append("switch speed-ups vs default (PGD-20, batch 50): " + ", ".join(
            f"{k} {v:.2f}x" for k, v in sw["speedup_vs_default"].items() if k != "default"))
        b = sw["bf16_robust_acc"]
        lines.append(f"bf16 autocast robust accuracy (PGD-{b['steps']}, ε={b['eps']}, {b['images']} images): "
                     f"{b['bf16_autocast']:.1%} vs fp32 {b['fp32']:.1%}")
    return "\n".join(lines)


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "cpu": cpu,
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


# --------------------------------------------------------------------------- entry point
def run(*, quick: bool, device: str, json_path: Path | None, data_root: str | os.PathLike = "data",
        settings: Optional[Settings] = None, threads: Optional[int] = None, show: bool = True) -> dict:
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
    from .io import write_json

    t0 = time.perf_counter()
    res: dict = {"quick": quick, "settings": asdict(s), "machine": machine(dev)}
    say = (lambda msg: print(f"[bench {time.perf_counter() - t0:5.0f}s] {msg}", file=sys.stderr, flush=True)) \
        if show else (lambda msg: None)
    with mnist(data_root) as data:
        say("pre-training LeNet5-Madry")
        model, res["pretrain"] = pretrain(data, s, dev)
        say(f"training steps ({s.warmup}+{s.rounds} rounds)")
        res["train"] = bench_train_steps(model, data, s, dev)
        say("our PGD vs torchattacks")
        res["attack"] = bench_pgd_vs_torchattacks(model, data, s, dev)
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
