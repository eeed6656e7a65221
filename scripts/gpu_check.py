"""`make gpu-check`: what this code does on one GPU, in one JSON (also printed).

    python scripts/gpu_check.py --device cuda --out results/gpu_check.json   # on an H100: ≤ 8 minutes
    python scripts/gpu_check.py --device cpu --dry-run                        # CI: the script itself, ~1 minute

It imports only the core (mma.attacks, models, train, data, compute, bench, evaluation) and
pytest: no MLflow, DVC, Snakemake, foolbox, AutoAttack or torchattacks (the bench
skips its torchattacks rows when that is missing).  pydantic (the params schema)
comes from the wheel folder `make gpu-wheels` prepares.  Parts, each timed and
each allowed to fail on its own (its error goes into the JSON), the JSON saved after
each part and each timed case (a run killed at its time limit keeps what it measured):

1. ``tests``: ``pytest -m gpu tests/test_gpu.py`` on the device (CUDA results against
   CPU for pgd / an_pgd / the MMA step, resume equality, bf16 agreement, no host sync
   in the training loop between reads).
2. ``bench``: ``mma.bench`` --quick on the device (tiny settings with --dry-run).
3. ``steps``: N timed steps (default 300) of the real training loop per case (CASES:
   STD / PGD-40 / MMA-40 on LeNet5-Madry, batch 50, MNIST; PGD-10 / MMA-10 on
   WideResNet-28-4, batch 128, CIFAR10-shaped images of learnable class templates,
   ``cifar_like``) and switch combination (COMBOS: the fp32 baseline, and the graph
   path gpu-paper trains with, ``GRAPH_PATH``, in fp32, bf16 and channels_last).  A step's
   time is the median over windows of ``log_every`` steps after the first window (warm-up,
   capture).  Then the MMA-over-PGD ratios, the graph path's speed-up over eager, and the
   evaluation attacks' rate (``mma.evaluation.whitebox.survival``, PGD at batch 500).
4. ``projection``: GPU-hours of the paper's MNIST grid (4 models × 100k steps, plus
   Table 1's attacks, an upper bound without early exit) and CIFAR10 grid, from the
   graph path's times in 3; ``goals_met`` judges GOALS on them.

A wall-clock budget (``--budget-s``, default 450 s) skips what would not fit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# The goals on one H100 (an H200 counts), judged on the graph path's rows
GOALS = {
    "mnist_mma40_step_ms": 5.0,
    "mnist_pgd40_step_ms": 4.0,
    "mma40_over_pgd40": 1.3,
    "wrn_mma10_step_ms": 40.0,
    "mnist_linf_grid_with_table1_gpu_h": 0.5,
}
MIN_ATTACKED = 0.5  # an MMA step time counts only where the step attacked at least half of its batch
MNIST_GRID = ["std", "pgd40", "mma40", "mma40"]  # params.yaml: STD, PGD-0.3, MMA-0.45, MMA v1 (100k steps each)
CIFAR_GRID = ["pgd10", "pgd10", "mma10", "pgd10", "pgd10", "mma10"]  # params.yaml's 6 CIFAR10 entries (50k steps)
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_paper import GRAPH_PATH  # the switches gpu-paper trains with on CUDA

# compute: sections timed, by name: the eager fp32 baseline, and the graph path ("graphs+..."), whose rows
# alone are judged and projected
COMBOS = {
    "fp32": {"precision": "fp32", "channels_last": False, "cuda_graphs": False},
    "graphs+fp32": {"precision": "fp32", "channels_last": False, **GRAPH_PATH},
    "graphs+bf16": {"precision": "bf16", "channels_last": False, **GRAPH_PATH},
    "graphs+fp32+channels_last": {"precision": "fp32", "channels_last": True, **GRAPH_PATH},
    "graphs+bf16+channels_last": {"precision": "bf16", "channels_last": True, **GRAPH_PATH},
}
# the dry run: the code paths, not the numbers (WideResNet-28-4 on a CPU: one combination, 2 steps of batch 4)
DRY_COMBOS, DRY_WRN = ("fp32", "graphs+bf16+channels_last"), "graphs+fp32"
GRAPHS = "graphs+"


@dataclass(frozen=True)
class Case:
    """A training step timed: ``arch`` (lenet: LeNet5-Madry on MNIST, wrn: WideResNet-28-4), ``method``,
    its attack steps (the dry run's: ``dry_steps``)."""

    arch: str
    method: str
    attack_steps: int = 0
    dry_steps: int = 0

    def key(self, k: int, combo: str) -> str:
        return f"{self.arch} {self.method}{k or ''} {combo}"


CASES = (
    Case("lenet", "std"),
    Case("lenet", "pgd", 40, 2),
    Case("lenet", "mma", 40, 2),
    Case("wrn", "pgd", 10, 2),
    Case("wrn", "mma", 10, 2),
)


def mnist_source() -> Path | None:
    for c in (
        os.environ.get("MMA_DATA_SOURCE"),
        ROOT.parent / "shared" / "data" / "mnist",
        ROOT / "shared" / "data" / "mnist",
    ):
        if c and Path(c).is_dir() and any(Path(c).iterdir()):
            return Path(c)
    return None


# --------------------------------------------------------------------------- 1. tests
def run_tests(device: str, timeout: float) -> dict:
    env = {**os.environ, "MMA_TEST_DEVICE": device, "PYTHONPATH": str(ROOT)}
    src = mnist_source()
    if src:
        env["MMA_DATA_SOURCE"] = str(src)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            str(ROOT / "tests" / "test_gpu.py"),
        ]
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
        cases = _junit(report) if report.exists() else {}
    failed = {k: v for k, v in cases.items() if v not in ("passed", "skipped")}
    return {
        "ok": p.returncode == 0,
        "returncode": p.returncode,
        "cases": cases,
        "failed": failed,
        "tail": p.stdout[-1500:] if p.returncode else p.stdout.strip().splitlines()[-1:],
    }


def _junit(path: Path) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                state = child.tag if child.tag == "skipped" else f"{child.tag}: {child.get('message', '')[:300]}"
        out[case.get("name")] = state
    return out


# --------------------------------------------------------------------------- 3. training steps
def lenet_data(device):
    """MNIST training images (uint8) if found, else random ones (timing only)."""
    src = mnist_source()
    if src is not None:
        sys.path.insert(0, str(ROOT / "tests" / "helpers"))
        from idx import read_idx  # numpy only; not conftest, which sets torch's thread count to 1

        def find(stem):
            return next(p for p in (src / f"{stem}.gz", src / stem) if p.exists())

        x = torch.from_numpy(read_idx(find("train-images-idx3-ubyte"))[:10000].copy()).unsqueeze(1)
        y = torch.from_numpy(read_idx(find("train-labels-idx1-ubyte"))[:10000].astype("int64"))
        return x, y, "mnist"
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, 256, (10000, 1, 28, 28), generator=g, dtype=torch.uint8),
        torch.randint(0, 10, (10000,), generator=g),
        "random",
    )


def cifar_like(n: int = 5000):
    """CIFAR10-shaped images a WideResNet learns in a few steps: each class a fixed random
    black/white template, mixed 3:1 with noise.  An MMA step costs what it attacks (the
    correctly classified examples): on random labels MMA attacked 1.5 % of each batch (the
    first H200 check), here 82 % after 5 steps (CPU, batch 32), as in a trained model's
    steady state.  The speed of a step does not depend on what the pixels show."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    templates = torch.randint(0, 2, (10, 3, 32, 32), generator=g, dtype=torch.uint8).int() * 255
    noise = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).int()
    return ((3 * templates[y] + noise) // 4).to(torch.uint8), y, "random, learnable class templates"


def time_steps(
    kind: str,
    method: str,
    attack_steps: int,
    switches,
    *,
    steps: int,
    log_every: int,
    device: str,
    batch: int | None = None,
) -> dict:
    """Median seconds per step of the real training loop (``mma.train.train``); ``batch``
    replaces the paper's batch size (the dry run's WideResNet)."""
    from mma.data import TensorBatcher, to_float
    from mma.train import ModelSpec, train

    if kind == "lenet":
        x, y, data = lenet_data(device)
        # Adam 1e-3 (the quick profile's): from scratch, most of a batch is classified correctly (and
        # attacked by MMA) after the first window, as in a real run's steady state
        base = dict(
            dataset="mnist", arch="lenet5_madry", norm="linf", batch_size=50, optimizer={"name": "adam", "lr": 1e-3}
        )
        blocks = {
            "std": {},
            "pgd": {"pgd": {"eps": 0.3, "steps": attack_steps, "step_size": 0.01}},
            "mma": {"mma": {"d_max": 0.45, "eps_min": 0.1, "steps": attack_steps}},
        }
    else:
        x, y, data = cifar_like()
        base = dict(
            dataset="cifar10",
            arch="wrn28_4",
            norm="linf",
            batch_size=128,
            optimizer={"name": "sgd", "lr": 0.3, "momentum": 0.9, "weight_decay": 2e-4},
        )
        blocks = {
            "pgd": {"pgd": {"eps": 8 / 255, "steps": attack_steps}},
            "mma": {"mma": {"d_max": 32 / 255, "eps_min": 0.005, "steps": attack_steps}},
        }
    if batch:
        base["batch_size"] = batch
    spec = ModelSpec(
        name=f"check-{kind}-{method}",
        method=method,
        train_steps=steps,
        eval_every=10**9,
        checkpoint_every=10**9,
        log_every=log_every,
        **base,
        **blocks[method],
    )
    batcher = TensorBatcher(x, y, spec.batch_size, seed=0, device=device)
    n_val = min(50, spec.batch_size)  # validation runs once, after the last timed step
    val = (to_float(x[:n_val], device), y[:n_val].to(device))
    marks: list[tuple[int, float]] = [(0, time.perf_counter())]
    attacked: list[float] = []

    def log(metrics, step):
        if "loss" in metrics:  # a read: the loop has synchronised (it read the window back)
            marks.append((step, time.perf_counter()))
            if "frac_correct" in metrics and len(marks) > 2:
                attacked.append(metrics["frac_correct"])

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(
            spec,
            batcher,
            val,
            model_path=Path(tmp) / "m.pt",
            resume_path=Path(tmp) / "r.pt",
            device=device,
            log=log,
            show_progress=False,
            compute=switches,
        )
        total = time.perf_counter() - t0
    per_step = [(t1 - t0_) / (s1 - s0) for (s0, t0_), (s1, t1) in zip(marks[1:], marks[2:]) if s1 > s0]
    per_step = per_step or [(marks[-1][1] - marks[0][1]) / max(1, marks[-1][0])]
    return {
        "median_ms": 1000 * statistics.median(per_step),
        "min_ms": 1000 * min(per_step),
        "windows": len(per_step),
        "first_window_ms": 1000 * (marks[1][1] - marks[0][1]) / max(1, marks[1][0]),
        "total_s": total,
        "data": data,
        "mma_frac_attacked": statistics.mean(attacked) if attacked else None,
    }


def mma_step_ms(timed: dict, prefix: str) -> tuple[float | None, str | None]:
    """The fastest MMA step time among ``timed``'s rows starting with ``prefix``, or None
    and why: an MMA step costs what it attacks (the correctly classified examples), so a
    run whose model classified few of its batch (random labels, too few steps) measured
    a cheaper step than a trained model's and judges no goal."""
    rows = [v for k, v in timed.items() if k.startswith(prefix) and "median_ms" in v]
    attacked = min((v.get("mma_frac_attacked") or 0.0 for v in rows), default=None)
    if attacked is not None and attacked < MIN_ATTACKED:
        return None, (
            f"{prefix}: MMA attacked {attacked:.1%} of a batch (a trained model's step attacks most of "
            "it): its time is a lower bound, no goal is judged on it"
        )
    return min((v["median_ms"] for v in rows), default=math.nan), None


def graph_rows(timed: dict) -> dict:
    """The graph path's rows of ``timed`` (keys "ARCH METHOD COMBO", COMBO "graphs+...")."""
    return {k: v for k, v in timed.items() if k.split(" ", 2)[2].startswith(GRAPHS)}


def best_ms(rows: dict, prefix: str) -> float:
    """The fastest median step time (ms) among ``rows`` starting with ``prefix``; nan if none was measured."""
    vals = [v["median_ms"] for k, v in rows.items() if k.startswith(prefix) and "median_ms" in v]
    return min(vals) if vals else math.nan


def eval_rate(device: str, switches, images: int, steps: int) -> dict:
    """Image-iterations per second of the evaluation's white-box PGD (``whitebox.survival``, one
    restart, every image attacked) at batch ``images`` on LeNet5-Madry, its labels the model's own
    predictions (every image starts correctly classified).  Timed on a second run, after the first
    (warm-up and capture of the same setting)."""
    from mma import compute
    from mma.config.evaluation import AttackSetting
    from mma.data import to_float
    from mma.evaluation.whitebox import predict, survival
    from mma.models import LeNet5Madry

    x, _, _ = lenet_data(device)
    model = compute.prepare(LeNet5Madry().to(device).eval(), switches)
    xb = to_float(x[:images], device)
    yb = predict(model, xb, images)
    active = torch.ones(images, dtype=torch.bool, device=device)
    with compute.attacks(switches):
        for _ in range(2):
            t0 = time.perf_counter()
            survival(
                model,
                xb,
                yb,
                0.3,
                AttackSetting(steps=steps),
                norm="linf",
                loss="ce",
                seed=0,
                active=active,
                clean_pred=yb,
                batch_size=images,
                show_progress=False,
            )  # returns on the host: synchronised
    dt = time.perf_counter() - t0
    return {
        "image_iterations_per_s": images * steps / dt,
        "batch": images,
        "steps": steps,
        "compute": switches.record(),
    }


def project(rows: dict, rate: dict | None) -> dict:
    """GPU-hours of the paper's grids from the step times of ``rows`` (the fastest setting of each)."""
    mnist = {
        "std": best_ms(rows, "lenet std"),
        "pgd40": best_ms(rows, "lenet pgd"),
        "mma40": best_ms(rows, "lenet mma"),
    }
    cifar = {"pgd10": best_ms(rows, "wrn pgd"), "mma10": best_ms(rows, "wrn mma")}
    train_h = sum(mnist[m] for m in MNIST_GRID) * 100_000 / 1000 / 3600
    from mma.config.evaluation import ALL_PAPER, Table1Params, paper_attacks

    settings = paper_attacks()
    iters = sum(1 if settings[s].attack == "fgsm" else settings[s].steps * settings[s].restarts for s in ALL_PAPER)
    n_eps = len(Table1Params().eps)
    # white-box on 3 Table-1 models + transfer sets from 3 sources, 10k images, no early exit
    image_iters = 2 * 3 * n_eps * iters * 10_000
    table1_h = image_iters / rate["image_iterations_per_s"] / 3600 if rate else math.nan
    cifar_h = sum(cifar[m] for m in CIFAR_GRID) * 50_000 / 1000 / 3600
    return {
        "mnist_step_s": {k: v / 1000 for k, v in mnist.items()},
        "cifar_step_s": {k: v / 1000 for k, v in cifar.items()},
        "mnist_grid_train_gpu_h": train_h,
        "table1_attacks_gpu_h_upper_bound": table1_h,
        "mnist_linf_grid_with_table1_gpu_h": train_h + table1_h,
        "cifar10_grid_train_gpu_h": cifar_h,
        "note": "the graph path's rows; training: 100k (MNIST) / 50k (CIFAR10) steps at the best measured step "
        "time; Table 1: every white-box setting and transfer set at 3 eps on 10k images with no early "
        "exit (an upper bound)",
    }


def judge(timed: dict, p: dict) -> tuple[dict, list[str]]:
    """(goals_met, notes): GOALS on the graph path's rows and projection ``p`` (None: not judged, and why)."""
    rows = graph_rows(timed)
    (mma40, note40), (wrn, note_wrn) = mma_step_ms(rows, "lenet mma"), mma_step_ms(rows, "wrn mma")
    notes = [n for n in (note40, note_wrn) if n]
    for gone, keys in (
        (mma40 is None, ("mnist_grid_train_gpu_h", "mnist_linf_grid_with_table1_gpu_h")),
        (wrn is None, ("cifar10_grid_train_gpu_h",)),
    ):
        for key in keys if gone else ():
            p[f"{key}_lower_bound"] = p.pop(key)
    pgd40 = best_ms(rows, "lenet pgd")
    values = {
        "mnist_mma40_step_ms": mma40,
        "mnist_pgd40_step_ms": pgd40,
        "mma40_over_pgd40": None if mma40 is None else mma40 / pgd40,
        "wrn_mma10_step_ms": wrn,
        "mnist_linf_grid_with_table1_gpu_h": p.get("mnist_linf_grid_with_table1_gpu_h"),
    }
    met = {k: None if v is None or not math.isfinite(v) else bool(v <= GOALS[k]) for k, v in values.items()}
    notes += [
        f"{k}: the graph path was not measured" for k, v in values.items() if v is not None and not math.isfinite(v)
    ]
    return met, notes


def ratios(timed: dict) -> dict:
    """MMA over PGD per switch setting (LeNet5 at 40 attack steps, WRN-28-4 at 10), and the graph
    path's speed-up over the fp32 baseline per case."""
    out: dict = {"mma_over_pgd": {}, "graphs_speedup": {}}
    for (arch, method, rest), v in ((k.split(" ", 2), v) for k, v in timed.items()):
        if "median_ms" not in v:
            continue
        if method.startswith("mma"):
            pgd = timed.get(f"{arch} {method.replace('mma', 'pgd')} {rest}", {})
            if "median_ms" in pgd:
                out["mma_over_pgd"][f"{arch} {method} {rest}"] = v["median_ms"] / pgd["median_ms"]
        eager = timed.get(f"{arch} {method} fp32", {})  # the eager baseline
        if rest.startswith(GRAPHS) and "median_ms" in eager:
            out["graphs_speedup"][f"{arch} {method} {rest}"] = eager["median_ms"] / v["median_ms"]
    return out


# --------------------------------------------------------------------------- the parts
class Check:
    """The run: its arguments, clock and JSON (saved after every part and timed case)."""

    def __init__(self, a: argparse.Namespace):
        self.a, self.t0 = a, time.perf_counter()
        self.out: dict = {
            "device": a.device,
            "dry_run": a.dry_run,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
            "mnist": str(mnist_source()),
            "goals": GOALS,
            "graph_path": GRAPH_PATH,
        }

    def left(self) -> float:
        return self.a.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:  # a run killed at its time limit keeps what it measured
        self.out["seconds"] = time.perf_counter() - self.t0
        self.a.out.parent.mkdir(parents=True, exist_ok=True)
        self.a.out.write_text(json.dumps(self.out, indent=2, default=str, allow_nan=True) + "\n")


def part_tests(c: Check) -> dict:
    return run_tests(c.a.device, timeout=min(240, max(30.0, c.left())))


def part_bench(c: Check) -> dict:
    from mma import bench

    settings = None
    if c.a.dry_run:
        settings = bench.Settings(
            rounds=1,
            warmup=0,
            pretrain_acc=0.0,
            pretrain_max_steps=10,
            pretrain_eval=100,
            train_steps=(2, 1),
            train_batches=(50,),
            attack_batch=16,
            attack_steps=2,
            restart_examples=8,
            restarts=2,
            restart_steps=2,
            warm_store=False,
            switch_images=16,
            job_steps=2,
            switch_train_steps=1,
        )
    with tempfile.TemporaryDirectory() as tmp:
        res = bench.run(quick=True, device=c.a.device, json_path=None, data_root=tmp, settings=settings, show=False)
    return {
        "ratios": res["ratios"],
        "paired_ratios": res["paired_ratios"],
        "targets_met": res["targets_met"],
        "table": res["table"].splitlines(),
    }


def time_case(c: Check, case: Case, combo: str) -> dict:
    """One timed row: the combination resolved as a training stage would."""
    from mma.compute import resolve
    from mma.config.compute import ComputeParams

    switches = resolve(ComputeParams(**COMBOS[combo]), c.a.device)
    if c.left() < (40 if switches.cuda_graphs else 20):  # warm-up and capture take their time first
        return {"skipped": "time budget"}
    tiny = case.arch == "wrn" and c.a.dry_run
    steps = 2 if tiny else c.a.steps or (6 if c.a.dry_run else 300)
    row = time_steps(
        case.arch,
        case.method,
        case.dry_steps if c.a.dry_run else case.attack_steps,
        switches,
        steps=steps,
        log_every=1 if tiny else max(1, steps // 6),
        device=c.a.device,
        batch=4 if tiny else None,
    )
    return {**row, "compute": switches.record()}


def part_steps(c: Check) -> dict:
    """Every case × combination, then the ratios, the evaluation rate, the projection and the goals."""
    combos = [
        k for k in (DRY_COMBOS + (DRY_WRN,) if c.a.dry_run else COMBOS) if not c.a.combos or k in c.a.combos.split(",")
    ]
    timed: dict = {}
    for case in CASES:
        for combo in combos:
            if c.a.dry_run and (combo == DRY_WRN) != (case.arch == "wrn"):
                continue
            key = case.key(case.dry_steps if c.a.dry_run else case.attack_steps, combo)
            try:
                timed[key] = time_case(c, case, combo)
            except Exception as e:  # noqa: BLE001 - reported, the other cases still run
                timed[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            c.out["steps"] = timed
            c.save()
    out = {"steps": timed, "ratios": ratios(timed)}
    rows = graph_rows(timed)
    try:  # at the graph path's fastest PGD setting
        combo = min(
            (v["median_ms"], k.split(" ", 2)[2])
            for k, v in rows.items()
            if k.startswith("lenet pgd") and "median_ms" in v
        )[1]
        from mma.compute import resolve
        from mma.config.compute import ComputeParams

        out["eval_rate"] = eval_rate(
            c.a.device,
            resolve(ComputeParams(**COMBOS[combo]), c.a.device),
            images=64 if c.a.dry_run else 500,
            steps=4 if c.a.dry_run else 40,
        )
    except Exception as e:  # noqa: BLE001
        out["eval_rate"] = {"error": f"{type(e).__name__}: {e}"}
    out["projection"] = project(rows, out["eval_rate"] if "image_iterations_per_s" in out["eval_rate"] else None)
    out["goals_met"], notes = judge(timed, out["projection"])
    if notes:
        out["not_representative"] = notes
    return out


PARTS = {"tests": part_tests, "bench": part_bench, "steps": part_steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes: checks the script, not the GPU")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per case (default 300; dry run 6)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip parts that would not fit (default 450 s)")
    ap.add_argument("--parts", default="tests,bench,steps", help="comma-separated subset of tests,bench,steps")
    ap.add_argument("--combos", default=None, help=f"comma-separated subset of: {', '.join(COMBOS)} (default: all)")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"gpu-check: --device {a.device} but torch {torch.__version__} sees no CUDA device; "
            "use DEVICE=cpu for a dry run",
            file=sys.stderr,
        )
        return 2
    c = Check(a)
    for name in a.parts.split(","):
        t0 = time.perf_counter()
        try:
            result = PARTS[name](c)
        except Exception as e:  # noqa: BLE001 - reported, the other parts still run
            result = {"error": f"{type(e).__name__}: {e}"}
        if name == "steps":
            c.out.update(result)
        else:
            c.out[name] = {**result, "seconds": time.perf_counter() - t0}
        c.save()
    print(a.out.read_text(), end="")
    ok = c.out.get("tests", {}).get("ok", True) and "error" not in c.out.get("bench", {})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
