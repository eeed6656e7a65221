"""Training: MMA enlarges input-space margins (a 2-D toy), and training resumes exactly.

Everything here runs the real loop, ``mma.train.train``, on a small MLP passed as
``model=`` (the spec's dataset/arch fields are then unused, apart from the dataset's
channel count, which an MLP ignores).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mma.attacks import an_pgd
from mma.compute import FP32, Compute
from mma.io import load_tensors
from mma.train import MMATrainSpec, ModelSpec, OptimizerSpec, PGDTrainSpec, train


# --------------------------------------------------------------------------- helpers
class Batcher:
    """Random-permutation batches of fixed tensors; ``batch(step)`` is a pure function
    of (seed, step), as the loop's resume contract requires.  ``crash_at``: raise when
    that step's batch is asked for (a killed process, after its last checkpoint)."""

    def __init__(self, x, y, batch_size: int, seed: int = 0, crash_at: int | None = None):
        self.x, self.y, self.batch_size, self.seed, self.crash_at = x, y, batch_size, seed, crash_at
        self.num_examples = len(x)

    def batch(self, step: int):
        if step == self.crash_at:
            raise KeyboardInterrupt(f"simulated crash at step {step}")
        epoch, i = divmod(step, len(self.x) // self.batch_size)
        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(1000 * self.seed + epoch))
        idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
        return self.x[idx], self.y[idx], idx


def mlp(seed: int, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def toy_spec(method: str, *, steps: int, seed: int = 0, **over) -> ModelSpec:
    blocks = {
        "std": {},
        "pgd": {"pgd": PGDTrainSpec(eps=0.1, steps=5)},
        "mma": {"mma": MMATrainSpec(eps_min=0.02, d_max=0.35, steps=10)},
    }[method]
    fields = dict(
        name=f"toy-{method}",
        dataset="mnist",
        arch="lenet5_madry",
        norm="l2",
        method=method,
        optimizer=OptimizerSpec(name="adam", lr=1e-2),
        train_steps=steps,
        batch_size=64,
        seed=seed,
        eval_every=steps,
        checkpoint_every=steps,
        log_every=1,
        **blocks,
    )
    fields.update(over)
    return ModelSpec(**fields)


# --------------------------------------------------------------------------- MMA's claim on a 2-D toy
def rare_far_class(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 (15/16 of the points) in the strip x₁ ∈ [0.45, 0.50]; class 1 (1/16) in
    x₁ ∈ [0.90, 0.95]; x₂ ∈ [0.1, 0.9] for both.  Any boundary in the 0.4-wide gap
    fits the data.  Cross-entropy's implicit bias is the max-*min* margin (mid-gap,
    x₁ ≈ 0.7: every point ~0.2-0.25 from it); the mean margin, which MMA maximises
    example by example up to d_max, grows as the boundary moves toward the rare
    class, until the common class is d_max away.  (Balanced toys do not separate the
    two: for a straight boundary between two balanced strips the mean margin is the
    same wherever it lies, and STD already finds the max-margin separator of two blobs.)"""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 16 == 0).long()
    x1 = torch.where(y == 1, 0.90, 0.45) + torch.rand(n, generator=g) * 0.05
    x2 = 0.1 + torch.rand(n, generator=g) * 0.8
    return torch.stack([x1, x2], 1), y


def grid_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, res: int = 250) -> torch.Tensor:
    """Per example, the L2 distance to the nearest point of a res×res grid over [0, 1]²
    that the model puts in another class (the minimal perturbation inside the box, to
    within half a cell's diagonal); 0 for a misclassified example."""
    t = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        pred = model(grid).argmax(1)
        ok = model(x).argmax(1) == y
    out = torch.zeros(len(x))
    for c in y.unique():
        rows = ((y == c) & ok).nonzero().squeeze(1)
        if rows.numel():
            out[rows] = torch.cdist(x[rows], grid[pred != c]).min(dim=1).values
    return out


def an_pgd_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AN-PGD's length per example (0 for a misclassified one)."""
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    out = torch.zeros(len(x))
    torch.manual_seed(0)
    _, eps = an_pgd(model, x[ok], y[ok], 0.1, norm="l2", eps_max=1.0, steps=20, bisection_steps=12)
    out[ok] = eps
    return out


def train_toy(method: str, x, y, tmp_path, *, steps: int = 400, seed: int = 0) -> nn.Module:
    model = mlp(seed)
    spec = toy_spec(method, steps=steps, seed=seed)
    train(
        spec,
        Batcher(x, y, spec.batch_size, seed),
        (x, y),
        model_path=tmp_path / f"{method}.pt",
        resume_path=tmp_path / f"{method}-resume.pt",
        show_progress=False,
        model=model,
    )
    return model.eval()


def test_mma_enlarges_the_mean_margin_on_a_2d_toy(tmp_path):
    x, y = rare_far_class(256, seed=0)
    x_test, y_test = rare_far_class(1024, seed=1)  # a fresh sample of the same distribution
    res = 250
    cell = 2**0.5 / res
    stats = {}
    for method in ("std", "mma"):
        model = train_toy(method, x, y, tmp_path)
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        m_an, m_grid = an_pgd_margin(model, x_test, y_test), grid_margin(model, x_test, y_test, res)
        # AN-PGD's length is a real perturbation: never (beyond the grid's resolution)
        # below the true minimal one, and close to it on average
        assert (m_an >= m_grid - cell).all(), method
        assert abs(m_an.mean() - m_grid.mean()) <= 0.03 * m_grid.mean(), method
        stats[method] = (
            acc,
            m_an.mean().item(),
            m_grid.mean().item(),
            m_grid[y_test == 0].mean().item(),
            m_grid[y_test == 1].mean().item(),
        )
    print("\n[2-D toy, L2] method: test accuracy, mean margin (an_pgd / grid), grid margin class 0 / class 1")
    for method, (acc, a, gm, g0, g1) in stats.items():
        print(f"  {method}: acc {acc:.4f}  margin {a:.4f} / {gm:.4f}   class 0 {g0:.4f}  class 1 {g1:.4f}")
    print(f"  ratio mma/std (grid): {stats['mma'][2] / stats['std'][2]:.3f}")
    assert stats["std"][0] >= 0.98  # the toy is separable and both fit it
    assert abs(stats["mma"][0] - stats["std"][0]) <= 0.02
    assert stats["mma"][1] >= 1.3 * stats["std"][1]  # by AN-PGD
    assert stats["mma"][2] >= 1.3 * stats["std"][2]  # by the dense grid


# --------------------------------------------------------------------------- checkpoints round-trip
def two_strips(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced classes in x₁ ∈ [0.3, 0.45] and [0.55, 0.7]: margins of 0.05-0.2, well
    below MMA's eps_max (0.3675), so the per-example ε store holds distinct values."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x1 = 0.3 + 0.25 * y + torch.rand(n, generator=g) * 0.15
    return torch.stack([x1, 0.1 + torch.rand(n, generator=g) * 0.8], 1), y


def run_logged(
    spec, x, y, folder, *, model: nn.Module, crash_at: int | None = None, compute: Compute = FP32
) -> dict[int, dict]:
    """Train (or resume) in ``folder``; returns {step: metrics} as logged."""
    logged: dict[int, dict] = {}
    batcher = Batcher(x, y, spec.batch_size, spec.seed, crash_at=crash_at)
    train(
        spec,
        batcher,
        (x[:128], y[:128]),
        model_path=folder / "model.pt",
        resume_path=folder / "resume.pt",
        show_progress=False,
        model=model,
        log=lambda metrics, step: logged.setdefault(step, {}).update(metrics),
        compute=compute,
    )
    return logged


# the training paths: today's (compacting, secant search), the fixed-shape one, and the graph
# path's code run eagerly (a CPU does not capture: tensor learning rate, capturable Adam)
PATHS = {"eager": FP32, "fixed": Compute("cpu", fixed_shape=True), "graph": Compute("cpu", cuda_graphs=True)}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("method", ["std", "pgd", "mma"])
def test_crash_and_resume_equals_training_in_one_go(method, path, tmp_path):
    """N steps in one go == k steps, a crash a few steps after the checkpoint at k (new
    process state: fresh model, optimiser, batch step and RNG objects), a resume from
    the resume file to N: the same losses after k, bit for bit the same final weights,
    optimiser state, best model and (MMA) per-example ε store.  Validation (which
    draws random numbers for AN-PGD / PGD) runs between checkpoints.  On each path."""
    x, y = two_strips(256, seed=0)
    spec = toy_spec(method, steps=30, eval_every=5, checkpoint_every=10)
    compute = PATHS[path]

    whole = run_logged(spec, x, y, tmp_path / "whole", model=mlp(0), compute=compute)

    with pytest.raises(KeyboardInterrupt):
        run_logged(spec, x, y, tmp_path / "crash", model=mlp(0), crash_at=14, compute=compute)
    assert load_tensors(tmp_path / "crash" / "resume.pt")["result"]["step"] == 10
    torch.manual_seed(12345)  # the crashed process's RNG state is gone
    # other initial weights: all must come from the file
    resumed = run_logged(spec, x, y, tmp_path / "crash", model=mlp(7), compute=compute)

    assert sorted(resumed) == list(range(11, 31))  # resumed at the checkpoint, no step logged twice
    for step in resumed:
        assert resumed[step]["loss"] == whole[step]["loss"], step  # the next-step loss, and every one after
    a, b = load_tensors(tmp_path / "whole" / "resume.pt"), load_tensors(tmp_path / "crash" / "resume.pt")
    assert a["result"]["step"] == b["result"]["step"] == 30
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert str(a["optimizer"]) == str(b["optimizer"])
    if method == "mma":
        store = a["step_fn"]["eps"]
        assert (store > 0).sum() > 100 and store.unique().numel() > 100  # the store is really in use
        assert torch.equal(a["step_fn"]["eps"], b["step_fn"]["eps"])
    ma, mb = load_tensors(tmp_path / "whole" / "model.pt"), load_tensors(tmp_path / "crash" / "model.pt")
    assert ma["step"] == mb["step"]
    for k in ma["state_dict"]:
        assert torch.equal(ma["state_dict"][k], mb["state_dict"][k]), k


def test_resume_gives_the_same_next_step_loss_as_continuing_in_memory(tmp_path):
    """The checkpoint written at step k, loaded into new objects, gives exactly the
    loss that the run still in memory computes at step k+1 (MMA: its ε store and the
    RNG that AN-PGD's random start draws from both come back)."""
    x, y = two_strips(256, seed=0)
    k = 6
    spec = toy_spec("mma", steps=k + 1, eval_every=100, checkpoint_every=k)
    in_memory = run_logged(spec, x, y, tmp_path / "a", model=mlp(0))
    # the same run stopped right after its checkpoint at k ...
    with pytest.raises(KeyboardInterrupt):
        run_logged(spec, x, y, tmp_path / "b", model=mlp(0), crash_at=k)
    state = load_tensors(tmp_path / "b" / "resume.pt")
    assert state["result"]["step"] == k
    # ... and resumed by new objects
    torch.manual_seed(999)
    resumed = run_logged(spec, x, y, tmp_path / "b", model=mlp(3))
    assert list(resumed) == [k + 1]
    assert resumed[k + 1]["loss"] == in_memory[k + 1]["loss"]
    assert resumed[k + 1]["eps_mean"] == in_memory[k + 1]["eps_mean"]


# --------------------------------------------------------------------------- Algorithm 2, one batch
@pytest.mark.parametrize("d_max, clean_loss_coeff", [(0.1, 1 / 3), (None, 0.0)])
def test_mma_step_is_algorithm_2(d_max, clean_loss_coeff):
    """One MMA batch step against a direct transcription of Algorithm 2 (with the final
    paper's hinge and clean-loss mix): the correct/wrong split by the soft margin,
    AN-PGD from max(eps_min, stored ε), the store updated to the found length and reset
    to 0 where wrong, CE at the found point only where ε < d_max, clean CE for the
    wrong ones, the sum over the full batch size."""
    from mma.attacks import soft_margin_loss
    from mma.train import MMAStep

    x, y = two_strips(64, seed=3)
    model = mlp(5).train()
    spec = MMATrainSpec(
        eps_min=0.02, d_max=d_max, eps_max=0.3 if d_max is None else None, steps=5, clean_loss_coeff=clean_loss_coeff
    )
    idx = torch.arange(64) * 3  # positions in a 200-example training split
    step = MMAStep(spec, "l2", 200)
    step.eps[idx] = torch.linspace(0.0, 0.2, 64)  # remembered lengths from earlier epochs
    step.eps[1] = 0.123  # an example not in this batch

    torch.manual_seed(11)
    loss, metrics = step(model, x, y, idx, step=0)

    torch.manual_seed(11)
    with torch.no_grad():
        logits = model(x)
    correct = soft_margin_loss(logits, y) < 0
    assert 0 < correct.sum() < 64  # both branches are exercised
    ce_clean = nn.functional.cross_entropy(logits, y, reduction="none")
    eps_init = torch.linspace(0.0, 0.2, 64)[correct].clamp(min=0.02)
    # the step hands its clean logits to the search (saves forwards; same guarantees)
    x_adv, eps = an_pgd(
        model,
        x[correct],
        y[correct],
        eps_init,
        norm="l2",
        eps_max=spec.resolved_eps_max,
        steps=5,
        search_loss=spec.search_loss,
        clean_logits=logits[correct],
    )
    with torch.no_grad():
        ce_adv = nn.functional.cross_entropy(model(x_adv), y[correct], reduction="none")
    hinge = float("inf") if d_max is None else d_max
    within = eps < hinge
    if d_max is not None:
        assert within.any() and not within.all()  # the hinge is exercised
    l_mma = ((ce_adv * within).sum() + ce_clean[~correct].sum()) / 64
    expected = (1 - clean_loss_coeff) * l_mma + clean_loss_coeff * ce_clean.mean()

    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert loss.requires_grad  # one backward pass through clean and adversarial terms
    assert torch.equal(step.eps[idx[correct]], eps.float())
    assert (step.eps[idx[~correct]] == 0).all()
    assert step.eps[1] == pytest.approx(0.123)
    assert metrics["frac_correct"] == pytest.approx(correct.float().mean().item())
    # the store round-trips through its state dict
    other = MMAStep(spec, "l2", 200)
    other.load_state_dict(step.state_dict())
    assert torch.equal(other.eps, step.eps)


# --------------------------------------------------------------------------- sync-free steps
@pytest.mark.parametrize("method", ["std", "pgd", "mma"])
def test_metrics_read_every_log_every_steps_are_the_window_means(method, tmp_path):
    """With log_every=4 the loop logs, at steps 4, 8, 10 (a checkpoint), 12, 16, 20, each
    metric's mean over the steps since the last read: equal to the mean of the values
    logged per step (log_every=1) over the same steps; and a crash/resume gives the same
    windows (the window restarts at every checkpoint)."""
    x, y = two_strips(256, seed=0)
    every = toy_spec(method, steps=20, eval_every=100, checkpoint_every=10, log_every=1)
    windows = every.model_copy(update={"log_every": 4})
    per_step = run_logged(every, x, y, tmp_path / "every", model=mlp(0))
    logged = run_logged(windows, x, y, tmp_path / "windows", model=mlp(0))
    reads = [4, 8, 10, 12, 16, 20]
    assert sorted(logged) == reads
    last = 0
    for at in reads:
        for key in ("loss", "lr", "loss_clean" if method == "mma" else "loss"):
            want = sum(per_step[s][key] for s in range(last + 1, at + 1)) / (at - last)
            assert logged[at][key] == pytest.approx(want, rel=1e-9), (at, key)
        last = at
    with pytest.raises(KeyboardInterrupt):
        run_logged(windows, x, y, tmp_path / "crash", model=mlp(0), crash_at=12)
    resumed = run_logged(windows, x, y, tmp_path / "crash", model=mlp(5))
    assert sorted(resumed) == [12, 16, 20]
    for at in resumed:
        assert resumed[at] == logged[at]


class _SyncCounter:
    """Counts the calls, made from mma's own code, that read a tensor back to the host."""

    METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu", "numpy")

    def __init__(self, monkeypatch):
        import sys
        from pathlib import Path

        import mma

        root = str(Path(mma.__file__).parent)
        self.calls: list[str] = []
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _name=name, _original=original, **k):
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(root):
                    self.calls.append(f"{_name} at {caller}:{sys._getframe(1).f_lineno}")
                return _original(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize(
    "method, path",
    [("std", "eager"), ("pgd", "eager"), ("std", "graph"), ("pgd", "graph"), ("mma", "fixed"), ("mma", "graph")],
)
def test_training_steps_read_nothing_back_between_log_reads(method, path, tmp_path, monkeypatch):
    """Training steps make no host sync between reads (on a GPU each would stall the
    launch queue; a CUDA graph cannot contain one): only the reads every log_every steps
    (and the checkpoint and validation at the end) call item/tolist/bool/nonzero from
    mma's code.  STD and PGD on every path; MMA on the fixed-shape path (the compacting
    one reads its number of correct rows)."""
    x, y = two_strips(256, seed=0)
    spec = toy_spec(method, steps=12, eval_every=12, checkpoint_every=12, log_every=6)
    reads: list[int] = []
    counter = _SyncCounter(monkeypatch)
    syncs_per_read: list[int] = []

    def log(metrics, step):
        if "loss" in metrics:
            syncs_per_read.append(len(counter.calls))
            reads.append(step)

    train(
        spec,
        Batcher(x, y, spec.batch_size),
        (x[:64], y[:64]),
        model_path=tmp_path / "m.pt",
        resume_path=tmp_path / "r.pt",
        show_progress=False,
        model=mlp(0),
        log=log,
        compute=PATHS[path],
    )
    assert reads == [6, 12]
    # the first read: its finite check and the window (one tolist each), nothing per step
    assert syncs_per_read[0] == 2, counter.calls


def test_non_finite_before_the_first_checkpoint_says_there_is_none(tmp_path):
    from mma.train import TrainingDiverged

    class Nan(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x) * float("nan")

    x, y = two_strips(256, seed=0)
    spec = toy_spec("std", steps=20, eval_every=20, checkpoint_every=10, log_every=5)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss and gradient at step 0; no checkpoint was written"):
        train(
            spec,
            Batcher(x, y, spec.batch_size),
            (x[:64], y[:64]),
            model_path=tmp_path / "m.pt",
            resume_path=tmp_path / "r.pt",
            show_progress=False,
            model=Nan(),
        )
    assert not (tmp_path / "r.pt").exists() and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "inf-inf"])
def test_finite_check_finds_one_bad_gradient_element_and_only_that(bad, tmp_path):
    """The gradient check sums each gradient (one read pass): a single NaN or inf element
    among 3.2M is found, inf and -inf in one tensor too (their sum is NaN); large finite
    gradients (1e30) are not flagged."""
    from mma.train import TrainingDiverged
    from mma.train.loop import FiniteCheck

    params = [nn.Parameter(torch.zeros(1024, 3136)), nn.Parameter(torch.zeros(10))]
    check, loss = FiniteCheck(torch.device("cpu")), torch.tensor(0.5)
    for step, fill in enumerate((1e30, -1e30, None)):
        for p in params:
            p.grad = torch.full_like(p, 1e-3)
        if fill is not None:
            params[0].grad[7, 11] = fill  # large but finite
        else:
            if bad == "inf-inf":
                params[0].grad[3, 5], params[0].grad[1000, 3000] = float("inf"), float("-inf")
            else:
                params[0].grad[1000, 3000] = bad
        check.update(step, loss, params)
    check.update(3, torch.tensor(float("nan")), params)  # a later bad step does not replace the first
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient at step 2; no checkpoint"):
        check.raise_if_bad("toy", tmp_path / "resume.pt")
