"""What `mma bench` times: the cases, on real MNIST and a briefly pre-trained LeNet5-Madry.

Reads top to bottom: data → a briefly pre-trained LeNet5-Madry (plain training to
~96 % test accuracy, so ~94 % of a batch is attacked, as early in MMA training) → training
steps (STD, PGD-40, MMA-40 at batch 50 and 128; PGD-10, MMA-10) → our PGD against
torchattacks.PGD (fixed steps, batch 128) and on a robust-accuracy job (attack +
judging forward) → naive against early-exit 50-restart white-box PGD at a large
and a small ε → the speed switches (threads, channels_last, bf16 autocast; on
attacks and training steps) with bf16's effect on robust accuracy.  The timing
itself is ``harness``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .harness import interleaved, summary


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
    job_steps: int = 10  # the robust-accuracy job (attack + judging forward, batch attack_batch): steps,
    job_eps: float = 0.02  # and an ε where (nearly) nothing is fooled: no early-exit gain, our worst case
    restart_examples: int = 32  # naive vs early-exit restarts: test images,
    restarts: int = 50  # restarts and steps per restart
    restart_steps: int = 10
    eps_large: float = 0.2  # ≤ 20 % of the pre-trained model survives one restart here
    eps_small: float = 0.05  # most (~90 %) survive here
    warm_store: bool = True  # also time MMA with a filled ε store (a later epoch)
    switches: bool = True  # measure threads / channels_last / bf16 autocast
    switch_images: int = 500  # test images for bf16 autocast's robust accuracy
    switch_train_steps: int = 10  # attack steps of the PGD / MMA training steps timed with each switch


FULL = Settings()
# quick: batch 50 only, 25 attack steps, a smaller restart problem (still 50 restarts)
QUICK = Settings(
    rounds=5,
    pretrain_max_steps=1000,
    train_batches=(50,),
    attack_steps=25,
    restart_examples=24,
    restart_steps=5,
    warm_store=False,
    switch_images=200,
)


# --------------------------------------------------------------------------- data and model
@contextlib.contextmanager
def mnist(data_root: str | os.PathLike) -> Iterator[dict[str, Tensor]]:
    """Real MNIST as uint8 tensors: from ``data_root`` if prepared there, else prepared
    (from $MMA_DATA_SOURCE, or downloaded) into a temporary folder deleted on exit."""
    from ..data import DataError, load_split, prepare_mnist

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
    from ..data import TensorBatcher, to_float
    from ..models import LeNet5Madry

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
    from ..config.model import MMATrainSpec, PGDTrainSpec
    from ..data import TensorBatcher
    from ..train.mma import MMAStep
    from ..train.steps import PGDStep, StdStep

    start = {k: v.clone() for k, v in model.state_dict().items()}
    n_train = len(data["x_train"])
    batchers = {
        b: TensorBatcher(data["x_train"], data["y_train"], b, seed=1, device=device)
        for b in set(s.train_batches) | {50}
    }
    specs: dict[str, tuple[object, int]] = {"std-b50": (StdStep(), 50)}
    main, short = s.train_steps
    for steps in (main, short):
        for b in s.train_batches if steps == main else (50,):
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
                frac_attacked.append(float(metrics["frac_correct"]))  # a sync; the timed call ends with one anyway

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
    return {
        "times": {k: summary(v) for k, v in times.items()},
        "raw": times,
        "frac_attacked": statistics.mean(frac_attacked) if frac_attacked else float("nan"),
    }


def bench_pgd_vs_torchattacks(model: nn.Module, data: dict[str, Tensor], s: Settings, device: torch.device) -> dict:
    """Linf PGD, ε = 0.3, step 0.01, random start, CE, fixed steps, eval mode: ours
    (select="loss", which has no early exit) against torchattacks.PGD."""
    from ..attacks import pgd
    from ..data import to_float

    x = to_float(data["x_test"][: s.attack_batch], device)
    y = data["y_test"][: s.attack_batch].to(device)
    cases = {"ours": lambda: pgd(model, x, y, 0.3, steps=s.attack_steps, step_size=0.01, loss="ce", select="loss")}
    theirs = _torchattacks_pgd(model, eps=0.3, alpha=0.01, steps=s.attack_steps)
    if theirs is not None:
        cases["torchattacks"] = lambda: theirs(x, y)
    model.eval()
    times = interleaved(cases, rounds=s.rounds, warmup=s.warmup, device=device)
    acc = {}
    for k, f in cases.items():
        torch.manual_seed(0)
        acc[k] = accuracy(model, f(), y)
    return {
        "times": {k: summary(v) for k, v in times.items()},
        "raw": times,
        "examples_per_s": {k: s.attack_batch / statistics.median(v) for k, v in times.items()},
        "robust_acc": acc,
        "batch": s.attack_batch,
        "steps": s.attack_steps,
        **({} if theirs is not None else {"skipped": "torchattacks is not installed"}),
    }


def _torchattacks_pgd(model: nn.Module, **kw):
    """torchattacks.PGD(model, random_start=True, **kw), or None where torchattacks is
    not installed (the GPU machine of `make gpu-check`): its rows are then skipped."""
    try:
        import torchattacks
    except ImportError:
        return None
    return torchattacks.PGD(model, random_start=True, **kw)


def bench_restarts(model: nn.Module, data: dict[str, Tensor], s: Settings, device: torch.device) -> dict:
    """White-box PGD with ``s.restarts`` restarts (select="target"), naive against early
    exit, at a large ε (few survive) and a small one (most survive).  Both runs start
    from the same seed and must give the same robust accuracy (asserted)."""
    from ..attacks import pgd
    from ..data import to_float

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

        times = interleaved(
            {"naive": case("naive", False), "early_exit": case("early_exit", True)},
            rounds=s.rounds,
            warmup=s.warmup,
            device=device,
        )
        acc = {k: accuracy(model, v, y) for k, v in last.items()}
        if acc["naive"] != acc["early_exit"]:
            raise AssertionError(f"early exit changed the robust accuracy at eps={eps}: {acc}")
        out[label] = {
            "eps": eps,
            "survive_first_restart": survive_one,
            "robust_acc": acc["naive"],
            "times": {k: summary(v) for k, v in times.items()},
            "raw": times,
            "speedup": statistics.median(times["naive"]) / statistics.median(times["early_exit"]),
        }
    return out


def bench_robust_job(model: nn.Module, data: dict[str, Tensor], s: Settings, device: torch.device) -> dict:
    """A plain robust-accuracy job: white-box Linf PGD (``s.job_steps`` steps, 2.5·ε/steps,
    random start, CE) and the forward that judges its output, ours (select="target",
    as the evaluation runs it) against torchattacks.PGD, at ``s.job_eps``, where
    (nearly) nothing is fooled, so early exit saves nothing."""
    from ..attacks import pgd
    from ..attacks.core import step_size
    from ..data import to_float

    x = to_float(data["x_test"][: s.attack_batch], device)
    y = data["y_test"][: s.attack_batch].to(device)
    eps, steps = s.job_eps, s.job_steps

    def judged(x_adv: Tensor) -> Tensor:
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y).sum()

    cases = {"ours": lambda: judged(pgd(model, x, y, eps, steps=steps, loss="ce"))}
    theirs = _torchattacks_pgd(model, eps=eps, alpha=step_size(eps, steps), steps=steps)
    if theirs is not None:
        cases["torchattacks"] = lambda: judged(theirs(x, y))
    model.eval()
    times = interleaved(cases, rounds=s.rounds, warmup=s.warmup, device=device)
    acc = {}
    for k, f in cases.items():
        torch.manual_seed(0)
        acc[k] = float(f()) / len(y)
    return {
        "times": {k: summary(v) for k, v in times.items()},
        "raw": times,
        "robust_acc": acc,
        "clean_acc": accuracy(model, x, y),
        "batch": s.attack_batch,
        "steps": steps,
        "eps": eps,
        **({} if theirs is not None else {"skipped": "torchattacks is not installed"}),
    }


def binomial_noise(p: float, n: int) -> float:
    """Two standard deviations of an accuracy p measured on n examples."""
    return 2.0 * (max(p * (1 - p), 0.0) / max(n, 1)) ** 0.5


# The switch comparison as data: each variant is what ``compute.Compute`` gets besides the
# device, and every case below runs once per variant, timed against "default" (fp32 eager).
SWITCH_VARIANTS: dict[str, dict] = {
    "default": {},
    "channels_last": {"channels_last": True},
    "bf16": {"precision": "bf16"},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
}
SWITCH_ATTACK_STEPS = 20  # the PGD attack timed with each switch, at batch 50 (the training batch), ε = 0.1
SWITCH_TRAIN_METHODS = ("pgd", "mma")  # training steps timed with each switch (``Settings.switch_train_steps``)


def bench_switches(model: nn.Module, data: dict[str, Tensor], s: Settings, device: torch.device) -> dict:
    """The speed switches of ``mma.compute``, each against fp32 eager on the same work:
    a PGD attack (batch 50, the training batch, 20 fixed steps) and the PGD and MMA
    training steps (``s.switch_train_steps`` attack steps), run as the stages run them
    (``compute.prepare``, ``compute.autocast`` around a training step,
    ``compute.attacks`` around an attack); intra-op threads on a CPU.  Then bf16's
    effect: PGD-20 robust accuracy and AN-PGD's mean found ε, fp32 against bf16."""
    import copy

    from .. import compute
    from ..attacks import pgd
    from ..data import to_float

    x = to_float(data["x_test"][:50], device)
    y = data["y_test"][:50].to(device)
    variants = {k: compute.Compute(device.type, **v) for k, v in SWITCH_VARIANTS.items()}
    nets = {k: compute.prepare(copy.deepcopy(model), c) for k, c in variants.items()}
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def run_pgd(k: str, xs: Tensor, ys: Tensor) -> Tensor:
        with compute.attacks(variants[k]):
            return pgd(nets[k], xs, ys, 0.1, steps=SWITCH_ATTACK_STEPS, loss="ce", select="loss")

    cases = {f"PGD-{SWITCH_ATTACK_STEPS} attack {k}": (lambda k=k: run_pgd(k, x, y)) for k in variants}
    threads = torch.get_num_threads()
    cases.update(_other_threads_case(threads, device, lambda: run_pgd("default", x, y)))
    state = {"round": 0}
    cases.update(_switch_train_cases(nets, variants, data, s, device, state))

    def before(name: str, r: int) -> None:
        state["round"] = r
        for net in nets.values():
            net.load_state_dict(start)

    model.eval()
    times = interleaved(cases, rounds=s.rounds, warmup=s.warmup, device=device, before=before)
    for net in nets.values():
        net.load_state_dict(start)
    speedup, paired = _speedups_vs_default(times)
    return {
        "times": {k: summary(v) for k, v in times.items()},
        "raw": times,
        "threads": threads,
        "speedup_vs_default": speedup,
        "paired_speedup_vs_default": paired,
        **_bf16_effect(model, nets, variants, data, s, device, run_pgd),
    }


def _other_threads_case(threads: int, device: torch.device, attack) -> dict:
    """On a CPU, the default variant's attack at the other thread count (1 if more are set,
    else 2 where there are 2 cores); none elsewhere."""
    other = 1 if threads > 1 else min(2, os.cpu_count() or 1)
    if device.type != "cpu" or other == threads:
        return {}

    def other_threads():
        torch.set_num_threads(other)
        try:
            attack()
        finally:
            torch.set_num_threads(threads)

    return {f"PGD-{SWITCH_ATTACK_STEPS} attack threads={other}": other_threads}


def _switch_train_cases(
    nets: dict, variants: dict, data: dict[str, Tensor], s: Settings, device: torch.device, state: dict
) -> dict:
    """A PGD and an MMA training step (batch 50) per variant, each training its own copy of
    the model with its own Adam (the weights are restored before every call); the batch of
    round ``state["round"]``, the same for every case."""
    from .. import compute
    from ..config.model import MMATrainSpec, PGDTrainSpec
    from ..data import TensorBatcher
    from ..train.mma import MMAStep
    from ..train.steps import PGDStep

    batcher = TensorBatcher(data["x_train"], data["y_train"], 50, seed=1, device=device)
    k_steps, n_train = s.switch_train_steps, len(data["x_train"])

    def train_case(method: str, k: str):
        step_fn = (
            PGDStep(PGDTrainSpec(eps=0.3, steps=k_steps), "linf", 10**9)
            if method == "pgd"
            else MMAStep(MMATrainSpec(steps=k_steps), "linf", n_train, device=device)
        )
        net = nets[k]
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def call():
            xb, yb, idx = batcher.batch(state["round"])
            net.train()
            with compute.autocast(variants[k]):
                loss, _ = step_fn(net, xb, yb, idx, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            net.eval()

        return call

    return {
        f"{method}{k_steps}-b50 step {k}": train_case(method, k) for method in SWITCH_TRAIN_METHODS for k in variants
    }


def _speedups_vs_default(times: dict[str, list[float]]) -> tuple[dict, dict]:
    """Each case's speed-up over the "default" case of its row (same name, last word
    "default"): the ratio of the medians, and paired (the median of each round's ratio)."""
    speedup, paired = {}, {}
    for name, t in times.items():
        base = name.rsplit(" ", 1)[0] + " default"
        if base in times and base != name:
            speedup[name] = statistics.median(times[base]) / statistics.median(t)
            paired[name] = statistics.median(b / v for b, v in zip(times[base], t))
    return speedup, paired


def _bf16_effect(
    model: nn.Module, nets: dict, variants: dict, data: dict[str, Tensor], s: Settings, device: torch.device, run_pgd
) -> dict:
    """bf16's effect on results, judged in fp32 on the first ``s.switch_images`` test images
    from the same seeds: PGD-20 robust accuracy (against two binomial standard deviations)
    and AN-PGD's mean found ε on the correctly classified ones (against the search resolution)."""
    from .. import compute
    from ..attacks import an_pgd
    from ..attacks.an_pgd import default_tolerance
    from ..data import to_float

    x_big = to_float(data["x_test"][: s.switch_images], device)
    y_big = data["y_test"][: s.switch_images].to(device)
    acc = {}
    for k in ("default", "bf16"):
        torch.manual_seed(2)
        acc[k] = accuracy(model, run_pgd(k, x_big, y_big), y_big)
    with torch.no_grad():
        ok = model(x_big).argmax(1) == y_big
    found = {}
    for k in ("default", "bf16"):
        torch.manual_seed(3)
        with compute.attacks(variants[k]):
            _, length = an_pgd(nets[k], x_big[ok], y_big[ok], 0.1, eps_max=0.5, steps=s.switch_train_steps)
        found[k] = length
    n, noise = len(y_big), binomial_noise(acc["default"], len(y_big))
    return {
        "bf16_robust_acc": {
            "fp32": acc["default"],
            "bf16_autocast": acc["bf16"],
            "eps": 0.1,
            "steps": SWITCH_ATTACK_STEPS,
            "images": n,
            "binomial_noise_2sd": noise,
            "within_noise": abs(acc["bf16"] - acc["default"]) <= noise,
        },
        "bf16_an_pgd_eps": {
            "fp32_mean": float(found["default"].mean()),
            "bf16_mean": float(found["bf16"].mean()),
            "mean_abs_diff": float((found["bf16"] - found["default"]).abs().mean()),
            "resolution": default_tolerance(0.5),
            "examples": int(ok.sum()),
            "steps": s.switch_train_steps,
        },
    }
