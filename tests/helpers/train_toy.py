"""A small training run for the crash/resume tests: `python train_toy.py OUT_DIR [METHOD]`.

Deterministic (CPU, deterministic algorithms, fixed seeds); writes OUT_DIR/model.pt
(the selected model), OUT_DIR/resume.pt and OUT_DIR/final.pt (the last weights)."""

import sys
from pathlib import Path

import torch
from torch import nn

from mma.io import save_tensors
from mma.train import ModelSpec, train

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


class Batcher:
    def __init__(self, n=512, dim=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, dim, generator=g)
        self.y = (self.x[:, :3].sum(1) > 1.5).long() + 2 * (self.x[:, 3] > 0.5).long()
        self.num_examples = n

    def batch(self, step):
        perm = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(step // 16))
        idx = perm[(step % 16) * 32 : (step % 16 + 1) * 32]
        return self.x[idx], self.y[idx], idx


def main(out: Path, method: str, steps: int) -> None:
    blocks = {
        "mma": {"mma": {"eps_min": 0.02, "d_max": 0.3, "steps": 5}},
        "pgd": {"pgd": {"eps": 0.1, "steps": 5}},
        "std": {},
    }[method]
    spec = ModelSpec(
        name=f"toy-{method}",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method=method,
        train_steps=steps,
        batch_size=32,
        eval_every=20,
        checkpoint_every=7,
        optimizer={"lr": 3e-3},
        **blocks,
    )
    torch.manual_seed(123)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))
    b = Batcher()
    train(
        spec,
        b,
        (b.x[:128], b.y[:128]),
        model_path=out / "model.pt",
        resume_path=out / "resume.pt",
        model=model,
        show_progress=False,
    )
    save_tensors(out / "final.pt", model.state_dict())


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "mma", int(sys.argv[3]) if len(sys.argv) > 3 else 200)
