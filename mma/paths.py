"""Where every stage reads and writes: one place, so the CLI, dvc.yaml and the
Snakefile agree (a test checks the pipeline files against these)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path("results")


def model_dir(name: str) -> Path:
    """results/models/NAME/: model.pt (best on validation), metrics.json."""
    return RESULTS / "models" / name


def model_file(name: str) -> Path:
    return model_dir(name) / "model.pt"


def spec_file(name: str) -> Path:
    """results/specs/NAME.json: the model's resolved settings (``mma spec NAME``).  DVC
    cannot depend on one element of the ``models`` list, so each train stage depends on
    its own file: editing one model reruns only that model."""
    return RESULTS / "specs" / f"{name}.json"


def eval_spec_file(name: str) -> Path:
    """results/specs/NAME.evaluate.json: what the evaluate stage of NAME reads besides its
    model and the data (settings, and each transfer set's hash): `mma spec NAME --evaluate`."""
    return RESULTS / "specs" / f"{name}.evaluate.json"


def metrics_file(name: str) -> Path:
    """results/metrics/NAME.json: the model's headline numbers (DVC metrics, percent)."""
    return RESULTS / "metrics" / f"{name}.json"


PLOTS = ("train", "val", "robust_vs_eps")  # train.py writes the first two, evaluate.py the last


def plot_file(kind: str, name: str) -> Path:
    """results/plots/KIND/NAME.tsv (DVC plots, one folder per kind: dvc.yaml's top-level `plots`)."""
    assert kind in PLOTS, kind
    return RESULTS / "plots" / kind / f"{name}.tsv"


def resume_file(name: str) -> Path:
    """Outside the declared outputs (DVC deletes outputs before a rerun; a resume
    checkpoint must survive a crash)."""
    return RESULTS / "checkpoints" / name / "resume.pt"


def transfer_dir(source: str) -> Path:
    """results/transfer/SOURCE/: one adversarial set per (setting, ε)."""
    return RESULTS / "transfer" / source


def eval_dir(name: str) -> Path:
    """results/eval/NAME/: metrics.json and per-example results."""
    return RESULTS / "eval" / name


def report_dir() -> Path:
    """results/report/: table1.md, table1.csv, figure3.png, summary.json, margins.png."""
    return RESULTS / "report"


def lock_file(stage: str, name: str) -> Path:
    """results/.locks/STAGE-NAME.lock: held (flock) while a stage works on NAME; never deleted
    (deleting a held lock file would let a third process lock a new file beside it)."""
    return RESULTS / ".locks" / f"{stage}-{name}.lock"
