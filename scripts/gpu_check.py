"""`make gpu-check`: what this code does on one GPU, in one JSON (also printed).

    python scripts/gpu_check.py --device cuda --out results/gpu_check.json   # on an H100: ≤ 8 minutes
    python scripts/gpu_check.py --device cpu --dry-run                        # CI: the script itself, ~1 minute

It imports only the core (mma.attacks, models, train, data, compute, bench) and
pytest: no MLflow, DVC, Snakemake, foolbox, AutoAttack or torchattacks (the bench
skips its torchattacks rows when that is missing).  pydantic (the params schema)
comes from the wheel folder `make gpu-wheels` prepares.  Parts, each timed and
each allowed to fail on its own (its error goes into the JSON):

1. ``tests``: ``pytest -m gpu tests/test_gpu.py`` on the device (CUDA results against
   CPU for pgd / an_pgd / the MMA step, resume equality, bf16 agreement, no host sync
   in the training loop between reads).
2. ``bench``: ``mma.bench`` --quick on the device (tiny settings with --dry-run).
3. ``steps``: N timed steps (default 300) of the real training loop, per switch
   combination: STD / PGD-40 / MMA-40 on LeNet5-Madry (batch 50, MNIST) and PGD-10 /
   MMA-10 on WideResNet-28-4 (batch 128, CIFAR10-shaped images of learnable class
   templates, ``cifar_like``).  A step's time is the median over
   windows of ``log_every`` steps after the first window (warm-up, compilation).
4. ``projection``: GPU-hours of the paper's MNIST grid (4 models × 100k steps, plus
   Table 1's attacks, an upper bound without early exit) and CIFAR10 grid, from 3.

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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# the speed goals for one H100
GOALS = {"mnist_mma40_step_ms": 5.0, "wrn_mma10_step_ms": 40.0, "mnist_linf_grid_with_table1_gpu_h": 1.0}
MIN_ATTACKED = 0.5  # an MMA step time counts only where the step attacked at least half of its batch
MNIST_GRID = ["std", "pgd40", "mma40", "mma40"]  # params.yaml: STD, PGD-0.3, MMA-0.45, MMA v1 (100k steps each)
CIFAR_GRID = ["pgd10", "pgd10", "mma10", "pgd10", "pgd10", "mma10"]  # params.yaml's 6 CIFAR10 entries (50k steps)


def mnist_source() -> Path | None:
    for c in (os.environ.get("MMA_DATA_SOURCE"), ROOT.parent / "shared" / "data" / "mnist",
              ROOT / "shared" / "data" / "mnist"):
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
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
               f"--junitxml={report}", str(ROOT / "tests" / "test_gpu.py")]
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
        cases = _junit(report) if report.exists() else {}
    failed = {k: v for k, v in cases.items() if v not in ("passed", "skipped")}
    return {"ok": p.returncode == 0, "returncode": p.returncode, "cases": cases, "failed": failed,
            "tail": p.stdout[-1500:] if p.returncode else p.stdout.strip().splitlines()[-1:]}


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
    return (torch.randint(0, 256, (10000, 1, 28, 28), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (10000,), generator=g), "random")


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


def time_steps(kind: str, method: str, attack_steps: int, switches, *, steps: int, log_every: int, device: str,
               batch: int | None = None) -> dict:
    """Median seconds per step of the real training loop (``mma.train.train``); ``batch``
    replaces the paper's batch size (the dry run's WideResNet)."""
    from mma.data import TensorBatcher, to_float
    from mma.train import ModelSpec, train

    if kind == "lenet":
        x, y, data = lenet_data(device)
        # Adam 1e-3 (the quick profile's): from scratch, most of a batch is classified correctly (and
        # attacked by MMA) after the first window, as in a real run's steady state
        base = dict(dataset="mnist", arch="lenet5_madry", norm="linf", batch_size=50,
                    optimizer={"name": "adam", "lr": 1e-3})
        blocks = {"std": {}, "pgd": {"pgd": {"eps": 0.3, "steps": attack_steps, "step_size": 0.01}},
                  "mma": {"mma": {"d_max": 0.45, "eps_min": 0.1, "steps": attack_steps}}}
    else:
        x, y, data = cifar_like()
        base = dict(dataset="cifar10", arch="wrn28_4", norm="linf", batch_size=128,
                    optimizer={"name": "sgd", "lr": 0.3, "momentum": 0.9, "weight_decay": 2e-4})
        blocks = {"pgd": {"pgd": {"eps": 8 / 255, "steps": attack_steps}},
                  "mma": {"mma": {"d_max": 32 / 255, "eps_min": 0.005, "steps": attack_steps}}}
    if batch:
        base["batch_size"] = batch
    spec = ModelSpec(name=f"check-{kind}-{method}", method=method, train_steps=steps, eval_every=10**9,
                     checkpoint_every=10**9, log_every=log_every, **base, **blocks[method])
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
        train(spec, batcher, val, model_path=Path(tmp) / "m.pt", resume_path=Path(tmp) / "r.pt", device=device,
              log=log, show_progress=False, compute=switches)
        total = time.perf_counter() - t0
    per_step = [(t1 - t0_) / (s1 - s0) for (s0, t0_), (s1, t1) in zip(marks[1:], marks[2:]) if s1 > s0]
    per_step = per_step or [(marks[-1][1] - marks[0][1]) / max(1, marks[-1][0])]
    return {"median_ms": 1000 * statistics.median(per_step), "min_ms": 1000 * min(per_step),
            "windows": len(per_step), "first_window_ms": 1000 * (marks[1][1] - marks[0][1]) / max(1, marks[1][0]),
            "total_s": total, "data": data,
            "mma_frac_attacked": statistics.mean(attacked) if attacked else None}


def mma_step_ms(timed: dict, prefix: str) -> tuple[float | None, str | None]:
    """The fastest MMA step time among ``timed``'s rows starting with ``prefix``, or None
    and why: an MMA step costs what it attacks (the correctly classified examples), so a
    run whose model classified few of its batch (random labels, too few steps) measured
    a cheaper step than a trained model's and judges no goal."""
    rows = [v for k, v in timed.items() if k.startswith(prefix) and "median_ms" in v]
    attacked = min((v.get("mma_frac_attacked") or 0.0 for v in rows), default=None)
    if attacked is not None and attacked < MIN_ATTACKED:
        return None, (f"{prefix}: MMA attacked {attacked:.1%} of a batch (a trained model's step attacks most of "
                      "it): its time is a lower bound, no goal is judged on it")
    return min((v["median_ms"] for v in rows), default=math.nan), None


def eval_rate(device: str, switches, images: int, steps: int) -> dict:
    """Image-iterations per second of white-box PGD at the evaluation batch (500) on LeNet5-Madry."""
    from mma import compute
    from mma.attacks import pgd
    from mma.data import to_float
    from mma.models import LeNet5Madry

    x, y, _ = lenet_data(device)
    model = compute.prepare(LeNet5Madry().to(device).eval(), switches)
    xb, yb = to_float(x[:images], device), y[:images].to(device)
    with compute.attacks(switches):
        pgd(model, xb, yb, 0.3, steps=2, loss="ce", select="loss")  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pgd(model, xb, yb, 0.3, steps=steps, loss="ce", select="loss")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"image_iterations_per_s": images * steps / dt, "batch": images, "steps": steps}


def project(steps: dict, rate: dict) -> dict:
    """GPU-hours of the paper's grids from the measured step times (best switch setting)."""
    def best(prefix):  # "lenet pgd" matches "lenet pgd40 bf16" (and the dry run's "lenet pgd2 fp32")
        vals = [v["median_ms"] for k, v in steps.items() if k.startswith(prefix) and "median_ms" in v]
        return min(vals) / 1000 if vals else math.nan

    mnist = {"std": best("lenet std"), "pgd40": best("lenet pgd"), "mma40": best("lenet mma")}
    cifar = {"pgd10": best("wrn pgd"), "mma10": best("wrn mma")}
    train_h = sum(mnist[m] for m in MNIST_GRID) * 100_000 / 3600
    from mma.config.evaluation import ALL_PAPER, Table1Params, paper_attacks

    settings = paper_attacks()
    iters = sum(1 if settings[s].attack == "fgsm" else settings[s].steps * settings[s].restarts for s in ALL_PAPER)
    n_eps = len(Table1Params().eps)
    # white-box on 3 Table-1 models + transfer sets from 3 sources, 10k images, no early exit
    image_iters = 2 * 3 * n_eps * iters * 10_000
    table1_h = image_iters / rate["image_iterations_per_s"] / 3600 if rate else math.nan
    cifar_h = sum(cifar[m] for m in CIFAR_GRID) * 50_000 / 3600
    return {"mnist_step_s": mnist, "cifar_step_s": cifar, "mnist_grid_train_gpu_h": train_h,
            "table1_attacks_gpu_h_upper_bound": table1_h, "mnist_linf_grid_with_table1_gpu_h": train_h + table1_h,
            "cifar10_grid_train_gpu_h": cifar_h,
            "note": "training: 100k (MNIST) / 50k (CIFAR10) steps at the best measured step time; Table 1: every "
                    "white-box setting and transfer set at 3 eps on 10k images with no early exit (an upper bound)"}


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes: checks the script, not the GPU")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per case (default 300; dry run 6)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip parts that would not fit (default 450 s)")
    ap.add_argument("--parts", default="tests,bench,steps", help="comma-separated subset of tests,bench,steps")
    ap.add_argument("--combos", default=None, help="comma-separated switch combinations to time (default: all)")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu-check: --device {a.device} but torch {torch.__version__} sees no CUDA device; "
              "use DEVICE=cpu for a dry run", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    parts = set(a.parts.split(","))
    steps = a.steps or (6 if a.dry_run else 300)
    log_every = max(1, steps // 6)

    def left() -> float:
        return a.budget_s - (time.perf_counter() - t_start)

    def save() -> None:  # after every part and timed case: a run killed at its time limit keeps what it measured
        out["seconds"] = time.perf_counter() - t_start
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2, default=str, allow_nan=True) + "\n")

    out: dict = {"device": a.device, "dry_run": a.dry_run, "torch": torch.__version__,
                 "python": platform.python_version(), "cuda": torch.version.cuda,
                 "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
                 "mnist": str(mnist_source()), "goals": GOALS}
    if "tests" in parts:
        t0 = time.perf_counter()
        out["tests"] = run_tests(a.device, timeout=min(240, max(30.0, left())))
        out["tests"]["seconds"] = time.perf_counter() - t0
        save()
    if "bench" in parts:
        t0 = time.perf_counter()
        try:
            from mma import bench

            settings = None
            if a.dry_run:
                settings = bench.Settings(rounds=1, warmup=0, pretrain_acc=0.0, pretrain_max_steps=10,
                                          pretrain_eval=100, train_steps=(2, 1), train_batches=(50,), attack_batch=16,
                                          attack_steps=2, restart_examples=8, restarts=2, restart_steps=2,
                                          warm_store=False, switch_images=16, job_steps=2, switch_train_steps=1)
            with tempfile.TemporaryDirectory() as tmp:
                res = bench.run(quick=True, device=a.device, json_path=None, data_root=tmp, settings=settings,
                                show=False)
            out["bench"] = {"ratios": res["ratios"], "paired_ratios": res["paired_ratios"],
                            "targets_met": res["targets_met"], "table": res["table"].splitlines()}
        except Exception as e:  # noqa: BLE001 - reported, the other parts still run
            out["bench"] = {"error": f"{type(e).__name__}: {e}"}
        out["bench"]["seconds"] = time.perf_counter() - t0
        save()
    if "steps" in parts:
        from mma.compute import GRAPHED_METHODS, Compute

        kind = a.device.split(":")[0]
        combos = {"fp32": Compute(kind), "bf16": Compute(kind, precision="bf16"),
                  "fp32+channels_last": Compute(kind, channels_last=True),
                  "bf16+channels_last": Compute(kind, precision="bf16", channels_last=True)}
        if kind == "cuda":  # CUDA graphs through torch.compile(mode="reduce-overhead"): the launch-bound LeNet5
            combos["fp32+cuda_graphs"] = Compute(kind, cuda_graphs=True)
        if a.dry_run:  # the code paths, not the numbers: two combinations, 2 attack steps
            combos = {k: combos[k] for k in ("fp32", "bf16+channels_last")}
        if a.combos:
            combos = {k: combos[k] for k in a.combos.split(",") if k in combos}
        k40, k10 = (2, 2) if a.dry_run else (40, 10)
        cases = [("lenet", "std", 0), ("lenet", "pgd", k40), ("lenet", "mma", k40), ("wrn", "pgd", k10),
                 ("wrn", "mma", k10)]
        timed: dict = {}
        for arch, method, k in cases:
            for cname, c in combos.items():
                if arch == "wrn" and a.dry_run and cname != "fp32":
                    continue  # WRN-28-4 on a CPU: one combination is enough to check the code path
                key = f"{arch} {method}{k or ''} {cname}"
                if c.cuda_graphs and method not in GRAPHED_METHODS:
                    timed[key] = {"skipped": f"compute.resolve turns cuda_graphs off for {method.upper()}"}
                    continue
                # torch.compile (cuda_graphs) spends its first minute or two compiling, the WRN's the longest
                if left() < (120 if c.cuda_graphs else 20):
                    timed[key] = {"skipped": "time budget"}
                    continue
                try:
                    tiny = arch == "wrn" and a.dry_run  # WideResNet-28-4 on a CPU: 2 steps of batch 4
                    timed[key] = time_steps(arch, method, k, c, steps=2 if tiny else steps,
                                            log_every=1 if tiny else log_every, device=a.device,
                                            batch=4 if tiny else None)
                except Exception as e:  # noqa: BLE001
                    timed[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                out["steps"] = timed
                save()
        out["steps"] = timed
        try:
            best = min((v["median_ms"], k) for k, v in timed.items() if k.startswith("lenet pgd") and "median_ms" in v)
            c = combos[best[1].split(" ", 2)[2]]
            out["eval_rate"] = eval_rate(a.device, c, images=64 if a.dry_run else 500, steps=4 if a.dry_run else 40)
        except Exception as e:  # noqa: BLE001
            out["eval_rate"] = {"error": f"{type(e).__name__}: {e}"}
        out["projection"] = project(timed, out.get("eval_rate") if "image_iterations_per_s" in out.get("eval_rate", {})
                                    else None)
        p = out["projection"]

        (mma40, note40), (wrn, note_wrn) = mma_step_ms(timed, "lenet mma"), mma_step_ms(timed, "wrn mma")
        if note40 or note_wrn:
            out["not_representative"] = [n for n in (note40, note_wrn) if n]
        for gone, keys in ((mma40 is None, ("mnist_grid_train_gpu_h", "mnist_linf_grid_with_table1_gpu_h")),
                           (wrn is None, ("cifar10_grid_train_gpu_h",))):
            for key in keys if gone else ():
                p[f"{key}_lower_bound"] = p.pop(key)
        out["goals_met"] = {"mnist_mma40_step_ms": None if mma40 is None else mma40 <= GOALS["mnist_mma40_step_ms"],
                            "wrn_mma10_step_ms": None if wrn is None else wrn <= GOALS["wrn_mma10_step_ms"],
                            "mnist_linf_grid_with_table1_gpu_h": None if mma40 is None else
                                p["mnist_linf_grid_with_table1_gpu_h"] <= GOALS["mnist_linf_grid_with_table1_gpu_h"]}
    save()
    print(a.out.read_text(), end="")
    ok = out.get("tests", {}).get("ok", True) and "error" not in out.get("bench", {})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
