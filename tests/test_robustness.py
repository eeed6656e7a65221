"""Nothing lost, nothing bad let in: safe loads, atomic writes, numerical faults."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mma.io import BadFileError, UnsafeFileError, atomic_path, load_tensors, save_tensors, write_json
from mma.train import ModelSpec, TrainingDiverged, load_model, train


class _Payload:
    """Unpickling this calls os.system: a checkpoint must never get that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, bad)
    with pytest.raises(UnsafeFileError, match="model.pt"):
        load_tensors(bad)
    with pytest.raises(UnsafeFileError):
        load_model(bad)
    assert not marker.exists()
    # the same payload with plain pickle would have run: the test is not vacuous
    with open(bad, "wb") as f:
        pickle.dump(_Payload(marker), f)
    with open(bad, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_truncated_tensor_file_is_refused(tmp_path):
    good = tmp_path / "t.pt"
    save_tensors(good, {"w": torch.ones(1000)})
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadFileError, match="t.pt"):
        load_tensors(good)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary left behind either
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")
    # an existing complete file survives a failed rewrite unchanged
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("garbage")
            raise RuntimeError
    assert '"a": 1' in target.read_text()


class _ToyBatcher:
    def __init__(self, n=256, dim=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, dim, generator=g)
        self.y = (self.x[:, 0] > 0.5).long()
        self.num_examples = n

    def batch(self, step):
        g = torch.Generator().manual_seed(step)
        idx = torch.randint(0, self.num_examples, (32,), generator=g)
        return self.x[idx], self.y[idx], idx


class _Exploding(nn.Module):
    """A linear model whose output turns to NaN after a given number of forwards."""

    def __init__(self, dim=8, after=5):
        super().__init__()
        self.lin = nn.Linear(dim, 10)
        self.calls, self.after = 0, after

    def forward(self, x):
        self.calls += 1
        out = self.lin(x)
        return out * float("nan") if self.training and self.calls > self.after else out


def _spec(**kw):
    base = dict(
        name="toy",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method="std",
        train_steps=20,
        batch_size=32,
        eval_every=5,
        checkpoint_every=3,
        optimizer={"lr": 1e-2},
    )
    base.update(kw)
    return ModelSpec(**base)


def test_nan_loss_stops_with_the_step_named_and_keeps_the_checkpoint(tmp_path):
    b = _ToyBatcher()
    resume = tmp_path / "resume.pt"
    with pytest.raises(TrainingDiverged, match=r"step 5\b"):
        train(
            _spec(),
            b,
            (b.x[:64], b.y[:64]),
            model_path=tmp_path / "m.pt",
            resume_path=resume,
            model=_Exploding(after=5),
            show_progress=False,
        )
    state = load_tensors(resume)
    assert state["result"]["step"] == 3  # the last good checkpoint, not overwritten by the bad step
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_mma_epsilon_collapse_is_reported(tmp_path):
    """A model that is never right leaves every stored ε at 0: a warning and a metric."""

    class AlwaysWrong(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 10)

        def forward(self, x):
            bias = torch.zeros(10)
            bias[1] = 1e3  # always predicts class 1
            return self.lin(x) + bias

    b = _ToyBatcher()
    b.y = torch.zeros_like(b.y)  # every label 0, every prediction 1: nothing is ever correct
    logged = []
    spec = _spec(method="mma", mma={"eps_min": 0.05, "d_max": 0.3, "steps": 2}, train_steps=5, eval_every=5)
    with pytest.warns(RuntimeWarning, match="epsilon is 0"):
        train(
            spec,
            b,
            (b.x[:32], b.y[:32]),
            model_path=tmp_path / "m.pt",
            resume_path=tmp_path / "r.pt",
            model=AlwaysWrong(),
            show_progress=False,
            log=lambda m, s: logged.append(m),
        )
    assert any(m.get("warn_eps_collapsed") == 1.0 for m in logged)


# --------------------------------------------------------------------------- crash and resume
TOY = Path(__file__).parent / "helpers" / "train_toy.py"


def _run_toy(out: Path, method: str, steps: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, str(TOY), str(out), method, str(steps)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mma", "pgd"])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, method):
    steps = 200
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    ref.mkdir(), crash.mkdir()
    p = _run_toy(ref, method, steps)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()

    rng = random.Random(7)
    kills = 0
    for _ in range(3):  # kill it up to three times at random points, then let it finish
        p = _run_toy(crash, method, steps)
        deadline = time.monotonic() + 120
        while not (crash / "resume.pt").exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.1, 1.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
    p = _run_toy(crash, method, steps)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    assert kills >= 1, "the run finished before it could be killed; make it longer"

    want, got = load_tensors(ref / "final.pt"), load_tensors(crash / "final.pt")
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    a, b = load_tensors(ref / "model.pt"), load_tensors(crash / "model.pt")
    assert a["step"] == b["step"] and a["selection_value"] == b["selection_value"]
    ra, rb = load_tensors(ref / "resume.pt"), load_tensors(crash / "resume.pt")
    assert ra["result"] == rb["result"]
    if method == "mma":
        assert torch.equal(ra["step_fn"]["eps"], rb["step_fn"]["eps"])
        assert (ra["step_fn"]["eps"] > 0).any()
