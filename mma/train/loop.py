"""The one training loop.  STD, PGD, PGDLS and MMA differ only in the batch step.

Reads top to bottom: build → resume → for each step (batch → one optimisation step:
learning rate, batch step, backward, finite check, optimiser step (``optimize.py``)
→ metrics → every ``log_every`` steps: read and log → validate and keep the best →
checkpoint).  ``Run`` holds the run's state and its phases.
Batches are a pure function of (seed, step) and the RNG states are checkpointed,
so a resumed run continues exactly where it stopped.

No host sync per step: the metrics are summed on the device and read every
``log_every`` steps and at every validation and checkpoint; the finite check keeps
the first bad step on the device and raises at the next read, before anything is
saved, so the last checkpoint on disk is always a good one.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .. import compute as compute_
from .. import interrupt
from ..attacks import an_pgd, anpgd_for_test, pgd
from ..attacks.core import full_precision, seeded
from ..compute import FP32, Compute
from ..config.model import ModelSpec
from ..io import BadFileError, load_tensors, save_tensors
from ..models import build_model
from ..progress import progress
from .optimize import TrainStep, keep_graph_safe, make_optimizer
from .steps import make_step

NUM_CLASSES = 10
IN_CHANNELS = {"mnist": 1, "cifar10": 3}


DIVERGED_HINT = (
    "Rerunning repeats the same steps: change the model's settings (e.g. a lower optimizer.lr; a "
    "checkpoint of other settings is discarded) or rerun with --restart"
)


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    step: int
    best_step: int
    best_value: float
    selection_metric: str
    history: list[dict] = field(default_factory=list)  # validation results


def new_model(spec: ModelSpec) -> nn.Module:
    return build_model(spec.arch, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS[spec.dataset])


# --------------------------------------------------------------------------- model selection
def selection_metric(spec: ModelSpec) -> str:
    """The validation key whose largest value wins (``spec.selection.metric``; by default
    the mean margin, for every method, as the final paper selects)."""
    return f"val_{spec.selection.metric}"


def validate(spec: ModelSpec, model: nn.Module, x_val: Tensor, y_val: Tensor, batch_size: int = 500) -> dict:
    """Clean accuracy, plus what ``spec.resolved_selection`` selects by: the mean margin
    (``val_mean_margin``; the authors' ``ANPGDForTest`` also gives ``val_adv_acc``, the
    robust accuracy at its PGD point at test_eps, for free) or the PGD robust accuracy at
    the training ε (``val_pgd_acc``).  A robust accuracy counts an example only if it is
    classified correctly both clean and at its adversarial point."""
    was_training = model.training
    model.eval()
    s = spec.resolved_selection
    n = x_val.shape[0]
    clean, robust, margin = (torch.zeros((), device=x_val.device, dtype=torch.float64) for _ in range(3))
    for i in range(0, n, batch_size):
        x, y = x_val[i : i + batch_size], y_val[i : i + batch_size]
        with torch.no_grad():
            logits = full_precision(model(x))
        ok = logits.argmax(1) == y
        clean += ok.sum()
        if s.metric == "pgd_acc":
            p = spec.pgd
            x_adv = pgd(
                model,
                x,
                y,
                p.eps,
                norm=spec.norm,
                steps=p.steps,
                step_size=p.step_size,
                loss=p.loss,
                l2_pgd=spec.l2_pgd,
            )
            with torch.no_grad():
                robust += (ok & (full_precision(model(x_adv)).argmax(1) == y)).sum()  # judged in fp32
        elif s.metric == "mean_margin" and s.margin_attack == "authors":
            length, adv_ok = anpgd_for_test(
                model,
                x,
                y,
                norm=spec.norm,
                test_eps=s.test_eps,
                test_eps_iter=s.test_eps_iter,
                steps=s.steps,
                eps_max=s.eps_max,
                bisection_steps=s.bisection_steps,
                l2_pgd=spec.l2_pgd,
            )
            margin += length.sum()
            robust += (ok & adv_ok).sum()
        elif s.metric == "mean_margin":
            rows = ok.nonzero().squeeze(1)
            if rows.numel():
                loss = spec.mma.attack_loss if spec.mma is not None else "soft_margin"
                _, length = an_pgd(
                    model,
                    x[rows],
                    y[rows],
                    s.eps_max / 2,
                    norm=spec.norm,
                    eps_max=s.eps_max,
                    steps=s.steps,
                    bisection_steps=s.bisection_steps,
                    attack_loss=loss,
                    clean_logits=logits[rows],
                    l2_pgd=spec.l2_pgd,
                )
                margin += length.sum()
    model.train(was_training)
    clean, robust, margin = torch.stack([clean, robust, margin]).tolist()  # the one read
    out = {"val_clean_acc": clean / n}
    if s.metric == "pgd_acc":
        out["val_pgd_acc"] = robust / n
    if s.metric == "mean_margin":
        out["val_mean_margin"] = margin / n
        if s.margin_attack == "authors":
            out["val_adv_acc"] = robust / n
    return out


def selection_record(spec: ModelSpec, steps_per_epoch: int) -> dict:
    """How the checkpoint was chosen, resolved (for the model file, info.json and MLflow):
    the metric, its measure's settings and the validation cadence in steps."""
    return {
        **spec.resolved_selection.model_dump(mode="json"),
        "key": selection_metric(spec),
        "eval_every": spec.eval_every,
        "eval_every_steps": spec.eval_interval(steps_per_epoch),
    }


# --------------------------------------------------------------------------- checkpoints
def rng_state() -> dict:
    """Every RNG a run touches, as plain tensors/numbers (weights-only loadable)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def model_record(spec: ModelSpec, model: nn.Module, **meta) -> dict:
    """What a model file holds: the weights (a state_dict, contiguous) and what is
    needed to rebuild it, nothing that needs code to unpickle."""
    return {
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "spec": spec.model_dump(mode="json"),
        **meta,
    }


# --------------------------------------------------------------------------- metrics on the device
class MetricWindow:
    """Training metrics summed on the device between reads (see ``steps``: a value is a
    tensor/float, averaged over steps, or a (total, count) pair, Σtotal/Σcount)."""

    def __init__(self) -> None:
        self.sums: dict[str, list] = {}

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            total, count = v if isinstance(v, tuple) else (v, 1.0)
            # copies: a replayed CUDA graph overwrites its output tensors at the next step
            total, count = (
                t.detach().to(torch.float64, copy=True) if isinstance(t, Tensor) else t for t in (total, count)
            )
            if k in self.sums:
                self.sums[k][0] = self.sums[k][0] + total
                self.sums[k][1] = self.sums[k][1] + count
            else:
                self.sums[k] = [total, count]

    def read(self) -> dict[str, float]:
        """The means since the last read, as floats (one transfer), and a fresh window."""
        keys = list(self.sums)
        if not keys:
            return {}
        device = next((t.device for k in keys for t in self.sums[k] if isinstance(t, Tensor)), None)
        flat = torch.stack(
            [torch.as_tensor(t, dtype=torch.float64, device=device).reshape(()) for k in keys for t in self.sums[k]]
        ).tolist()
        self.sums = {}
        return {k: flat[2 * i] / flat[2 * i + 1] if flat[2 * i + 1] else math.nan for i, k in enumerate(keys)}


class FiniteCheck:
    """The first step with a non-finite loss or gradient, kept on the device (updated in
    place: a replayed CUDA graph writes into the same tensors); raised by
    ``raise_if_bad`` at the next read (before any save).  A gradient is bad when its sum is
    not finite: any inf or NaN element makes it so (inf - inf is NaN), and so would finite
    elements near 1e32, whose fp32 sum overflows — a diverged step either way.  The sum is
    one read pass: 0.09 ms for LeNet5-Madry's gradients at 2 CPU threads, where the
    ∞-norm took 4.3 ms (torch 2.14)."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.what = torch.zeros((), dtype=torch.int64, device=device)  # 1 loss, 2 gradient, 3 both

    def update(self, step: int | Tensor, loss: Tensor, params) -> None:
        """``step``: an int, or a 0-dim tensor on the device (the fixed-shape path)."""
        grads = [p.grad for p in params if p.grad is not None]
        bad_loss = ~torch.isfinite(loss.detach())
        bad_grad = (
            ~torch.isfinite(torch.stack([g.sum() for g in grads])).all()
            if grads
            else torch.zeros((), dtype=torch.bool, device=loss.device)
        )
        new = (self.first < 0) & (bad_loss | bad_grad)
        self.first.copy_(torch.where(new, step, self.first))
        self.what.copy_(torch.where(new, bad_loss.long() + 2 * bad_grad.long(), self.what))

    def raise_if_bad(self, name: str, resume_path: Path) -> None:
        first, what = torch.stack([self.first, self.what]).tolist()
        if first < 0:
            return
        kind = {1: "loss", 2: "gradient", 3: "loss and gradient"}[what]
        where = (
            f"the last resume checkpoint is {resume_path}"
            if Path(resume_path).exists()
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(f"{name}: non-finite {kind} at step {first}; {where}. {DIVERGED_HINT}")


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, remedy: str = ""
) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild a model saved by :func:`train` (weights-only load, archive checksums checked).
    A file that is not such a model (damaged, another architecture, non-finite weights)
    raises BadFileError naming it and ``remedy``."""
    todo = f"; {remedy}" if remedy else ""
    record = load_tensors(path, remedy=remedy)
    try:
        spec = ModelSpec.model_validate(record["spec"])
        model = new_model(spec)
        model.load_state_dict(record["state_dict"])
    except Exception as e:  # noqa: BLE001 - a wrong or damaged record, whatever the exception
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise BadFileError(f"{path}: not a model file of this project ({type(e).__name__}: {first}){todo}") from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
        raise BadFileError(f"{path}: holds non-finite weights{todo}")
    return model.to(device).eval(), spec, {k: v for k, v in record.items() if k not in ("state_dict", "spec")}


def load_resume(path: str | Path, restart: str) -> dict:
    """A resume checkpoint, checked: readable, complete and with finite weights.  Any problem
    raises BadFileError saying what exists and how to discard it (``restart``: the command,
    e.g. ``mma train NAME --seed S --restart``).  Its tensors stay on the host: the model's,
    the optimizer's and the step's load_state_dict copy them to their device, and the RNG
    states must be host tensors (a CUDA run failed to resume when they were mapped there)."""
    todo = f"it cannot be resumed: run `{restart}` to discard it and train from step 0"
    state = load_tensors(path, map_location="cpu", remedy=todo)
    try:
        if not all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()):
            raise BadFileError(
                f"{path}: resume checkpoint holds non-finite weights (saved after training diverged?); {todo}"
            )
        int(state["result"]["step"]), state["optimizer"], state["step_fn"], state["rng"]  # noqa: B018 - present
    except BadFileError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BadFileError(f"{path}: not a complete resume checkpoint ({type(e).__name__}: {e}); {todo}") from None
    return state


# --------------------------------------------------------------------------- the loop
def train(
    spec: ModelSpec,
    batcher,
    val: tuple[Tensor, Tensor],
    *,
    model_path: str | Path,
    resume_path: str | Path,
    device: str | torch.device = "cpu",
    log: Optional[Callable[[dict, int], None]] = None,
    flush: Optional[Callable[[], None]] = None,
    show_progress: bool = True,
    model: Optional[nn.Module] = None,
    compute: Compute = FP32,
) -> TrainResult:
    """Train ``spec`` on ``batcher`` (``batch(step) -> (x, y, idx)``), validating on
    ``val`` every ``spec.eval_every`` steps (or once per epoch: ``batcher.steps_per_epoch``
    steps, else ⌊num_examples / batch_size⌋) and after the last step, and keeping the best
    model by ``spec.selection`` at ``model_path`` (with when and how it was chosen:
    ``step``, ``selection_metric``, ``selection_value``, ``selection``); a resume
    checkpoint at ``resume_path`` every
    ``spec.checkpoint_every`` steps.  ``log(metrics, step)`` receives per-step
    metrics; ``flush()`` is called right after each checkpoint is in place (metrics
    up to that step are then safe: a resumed run never logs a step twice).
    ``model`` replaces the registry's ``spec.arch`` (any classifier; for research
    and tests).  ``compute``: the resolved speed switches (``mma.compute.resolve``;
    plain fp32 eager by default), recorded in the model file; with ``cuda_graphs`` on
    CUDA each step is one captured CUDA graph (``mma.train.optimize``).

    ``log`` receives each metric's mean over the steps since the last read, every
    ``spec.log_every`` steps and at every validation and checkpoint.
    """
    run = Run.build(
        spec, batcher.num_examples, torch.device(device), model, compute, Path(model_path), Path(resume_path), flush
    )
    per_epoch = getattr(batcher, "steps_per_epoch", batcher.num_examples // spec.batch_size)
    eval_every, run.selection = spec.eval_interval(per_epoch), selection_record(spec, per_epoch)
    run.resume()
    x_val, y_val = val[0].to(run.device), val[1].to(run.device)
    window = MetricWindow()
    run.model.train()
    with progress(spec.train_steps, f"train {spec.name}", start=run.result.step, enabled=show_progress) as advance:
        while run.result.step < spec.train_steps:
            step = run.result.step
            x, y, idx = batcher.batch(step)
            window.add(run.step(x, y, idx, step))
            run.result.step = done = step + 1
            validating = done % eval_every == 0 or done == spec.train_steps
            stopping = interrupt.requested()  # SIGTERM (scancel, time limit): checkpoint this step, then stop
            saving = done % spec.checkpoint_every == 0 or done == spec.train_steps or stopping
            if done % spec.log_every == 0 or validating or saving:
                run.finite.raise_if_bad(spec.name, run.resume_path)  # before anything below saves
                means = window.read()
                if log:
                    log(means, done)
                advance(1, loss=means["loss"])
            else:
                advance(1)
            if validating:
                run.validate(x_val, y_val, log)
            if saving:
                run.checkpoint()
            if stopping:
                raise interrupt.Terminated(f"stopped by SIGTERM after step {done}; resume checkpoint {run.resume_path}")
    return run.result


@dataclass
class Run:
    """One training run's state, as ``train`` builds, resumes, steps, validates and saves it."""

    spec: ModelSpec
    device: torch.device
    model: nn.Module  # what is saved
    net: nn.Module  # what runs: ``model`` in channels_last / compiled (mma.compute.prepare)
    optimizer: torch.optim.Optimizer
    step_fn: Callable  # the batch step (mma.train.steps)
    step: TrainStep  # one optimisation step, eager or a CUDA graph
    finite: FiniteCheck
    compute: Compute
    model_path: Path
    resume_path: Path
    flush: Optional[Callable[[], None]]
    result: TrainResult
    saved_at: Optional[int] = None  # the step of the last resume checkpoint on disk (None: there is none)
    selection: dict = field(default_factory=dict)  # how the kept checkpoint is chosen (``selection_record``)

    @classmethod
    def build(
        cls,
        spec: ModelSpec,
        num_examples: int,
        device: torch.device,
        model: Optional[nn.Module],
        compute: Compute,
        model_path: Path,
        resume_path: Path,
        flush,
    ) -> "Run":
        """Seeds, model, optimiser and batch step at step 0."""
        torch.manual_seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        random.seed(spec.seed)
        model = (new_model(spec) if model is None else model).to(device)
        net = compute_.prepare(model, compute)
        optimizer = make_optimizer(spec, model, graph_safe=compute.cuda_graphs)
        step_fn = make_step(spec, num_examples, device)
        finite = FiniteCheck(device)
        result = TrainResult(step=0, best_step=-1, best_value=-math.inf, selection_metric=selection_metric(spec))
        return cls(
            spec=spec,
            device=device,
            model=model,
            net=net,
            optimizer=optimizer,
            step_fn=step_fn,
            step=TrainStep(spec, net, model, optimizer, step_fn, finite, compute, device),
            finite=finite,
            compute=compute,
            model_path=model_path,
            resume_path=resume_path,
            flush=flush,
            result=result,
        )

    def resume(self) -> None:
        """Continue from the resume checkpoint, if there is one: weights, optimiser, batch
        step (MMA's ε store), every RNG state (CUDA's included: the graph path's random
        starts continue from it), the result so far."""
        if not self.resume_path.exists():
            return
        spec = self.spec
        restart = f"mma train {spec.name} --seed {spec.seed} --restart"  # the member's own command
        state = load_resume(self.resume_path, restart)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            keep_graph_safe(self.optimizer, self.compute.cuda_graphs)
            self.step_fn.load_state_dict(state["step_fn"])
            set_rng_state(state["rng"])
            self.result = TrainResult(**state["result"])
        except Exception as e:  # noqa: BLE001 - made by other code or for another model
            raise BadFileError(
                f"{self.resume_path}: does not fit this model ({type(e).__name__}: "
                f"{str(e).strip()[:160]}); run `{restart}` to "
                "discard it and train from step 0"
            ) from None
        self.saved_at = self.result.step

    def validate(self, x_val: Tensor, y_val: Tensor, log) -> None:
        """Validate (eagerly: the validation's attacks compact their rows), log, and save
        the model if it is the best so far."""
        spec, result, metric = self.spec, self.result, selection_metric(self.spec)
        # a random stream of its own (seeded by the step), the training RNG left as it was: the
        # training trace does not depend on how, how often or whether the model is validated
        with (
            compute_.attacks(compute_.eager(self.compute)),
            seeded((spec.seed << 32 | result.step) % 2**63, self.device),
        ):
            values = validate(spec, self.net, x_val, y_val)
        if hasattr(self.step_fn, "eps_summary"):
            values.update(self.step_fn.eps_summary())
            if values["warn_eps_collapsed"]:
                warnings.warn(
                    f"{spec.name}: every per-example MMA epsilon is 0 at step {result.step} "
                    "(no training example is classified correctly)",
                    RuntimeWarning,
                    stacklevel=1,
                )
        values["step"] = result.step
        result.history.append(values)
        if log:
            log({k: v for k, v in values.items() if k != "step"}, result.step)
        if values[metric] > result.best_value:
            result.best_value, result.best_step = values[metric], result.step
            save_tensors(
                self.model_path,
                model_record(
                    spec,
                    self.model,
                    step=result.step,
                    selection_metric=metric,
                    selection_value=values[metric],
                    selection=self.selection,
                    compute=self.compute.record(),
                ),
            )

    def checkpoint(self) -> None:
        """The resume checkpoint, then ``flush`` (what was logged up to here is safe)."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):  # never save what cannot be resumed
            if self.saved_at is None:
                kept = "no checkpoint was written yet"
            else:
                kept = f"the last resume checkpoint is {self.resume_path} (step {self.saved_at})"
            raise TrainingDiverged(
                f"{self.spec.name}: non-finite weights at step {self.result.step}; {kept}. {DIVERGED_HINT}"
            )
        save_tensors(
            self.resume_path,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step_fn": self.step_fn.state_dict(),
                "rng": rng_state(),
                "result": self.result.__dict__,
                "spec": self.spec.model_dump(mode="json"),
                "compute": self.compute.record(),
            },
        )
        self.saved_at = self.result.step
        if self.flush:
            self.flush()
