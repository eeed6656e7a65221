"""Where every stage reads and writes: one place, so the CLI, dvc.yaml and the
Snakefile agree (a test checks the pipeline files against these).

Every model of the grid is trained once per seed of ``seeds`` (a *member*: name × seed);
each member's files live under its own ``seedS`` folder or file.  Paths are built here
from (name, seed) and never parsed back.  ``seed`` is an int, or a wildcard pattern
such as "{seed}" (the Snakefile's rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

RESULTS = Path("results")
Seed = Union[int, str]  # an int, or a Snakemake wildcard pattern ("{seed}")


def seed_part(seed: Seed) -> str:
    """The folder (or file stem) of one seed: seed0, seed1, ..."""
    return f"seed{seed}"


def model_dir(name: str, seed: Seed) -> Path:
    """results/models/NAME/seedS/: model.pt (best on validation), metrics.json, info.json."""
    return RESULTS / "models" / name / seed_part(seed)


def model_file(name: str, seed: Seed) -> Path:
    return model_dir(name, seed) / "model.pt"


def spec_file(name: str, seed: Seed) -> Path:
    """results/specs/NAME/seedS.json: what the train stage of the member reads, its resolved
    settings (``mma spec train NAME --seed S``).  DVC cannot depend on one element of the
    ``models`` mapping, so each train stage depends on its own file: editing one model reruns
    only that model's members."""
    return RESULTS / "specs" / name / f"{seed_part(seed)}.json"


def eval_spec_file(name: str, seed: Seed) -> Path:
    """results/specs/NAME/seedS.evaluate.json: what the evaluate stage of the member reads
    besides its model and the data (settings, and each transfer set's hash):
    `mma spec evaluate NAME --seed S`."""
    return RESULTS / "specs" / name / f"{seed_part(seed)}.evaluate.json"


def source_file(role: str, seed: Seed) -> Path:
    """results/sources/ROLE/seedS.json: what the transfer stage of Table-1 role ROLE reads, and
    the hash of its source's seed-S model file (`mma spec transfer ROLE --seed S`).  dvc.yaml names the
    transfer stages by role and cannot look the role's model up, so transfer@ROLE-S depends
    on this file instead of on the model file it cannot name."""
    return RESULTS / "sources" / role / f"{seed_part(seed)}.json"


def metrics_file(name: str, seed: Seed) -> Path:
    """results/metrics/NAME/seedS.json: the member's headline numbers (DVC metrics, percent)."""
    return RESULTS / "metrics" / name / f"{seed_part(seed)}.json"


PLOTS = ("train", "val", "robust_vs_eps")  # train.py writes the first two, evaluate.py the last


def plot_file(kind: str, name: str, seed: Seed) -> Path:
    """results/plots/KIND/NAME/seedS.tsv (DVC plots, one folder per kind: dvc.yaml's top-level `plots`)."""
    assert kind in PLOTS, kind
    return RESULTS / "plots" / kind / name / f"{seed_part(seed)}.tsv"


def resume_file(name: str, seed: Seed) -> Path:
    """Outside the declared outputs (DVC deletes outputs before a rerun; a resume
    checkpoint must survive a crash)."""
    return RESULTS / "checkpoints" / name / seed_part(seed) / "resume.pt"


def transfer_dir(role: str, seed: Seed) -> Path:
    """results/transfer/ROLE/seedS/: one adversarial set per (setting, ε), made on the seed-S
    member of the role's source model (by role: dvc.yaml's stages are named by role)."""
    return RESULTS / "transfer" / role / seed_part(seed)


def eval_dir(name: str, seed: Seed) -> Path:
    """results/eval/NAME/seedS/: metrics.json and per-example results."""
    return RESULTS / "eval" / name / seed_part(seed)


def report_dir() -> Path:
    """results/report/: table1.md, table1.csv, figure3.png, summary.json, margins.png."""
    return RESULTS / "report"


def lock_file(stage: str, name: str, seed: Seed | None = None) -> Path:
    """results/.locks/STAGE-NAME[-seedS].lock: held (flock) while a stage works on NAME (one
    member); never deleted (deleting a held lock file would let a third process lock a new
    file beside it)."""
    tail = "" if seed is None else f"-{seed_part(seed)}"
    return RESULTS / ".locks" / f"{stage}-{name}{tail}.lock"
