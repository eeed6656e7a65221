"""The train stage.

One member of the grid (model NAME trained with seed S), crash-safe and resumable:

    results/models/NAME/seedS/model.pt      best-on-validation weights (weights-only torch file: state_dict + spec)
    results/models/NAME/seedS/metrics.json  the DVC metrics: steps, best step, validation numbers (accuracies in %)
    results/models/NAME/seedS/info.json     bookkeeping: resolved params, how the model was selected (metric,
                                            measure, cadence, step), git commit, wall seconds, device, sizes
    results/plots/train/NAME/seedS.tsv      training curves (DVC plots): step, loss, accuracy (%), MMA's mean ε
    results/plots/val/NAME/seedS.tsv        validation curves: step, clean/PGD accuracy (%), mean margin
    results/checkpoints/NAME/seedS/         while training only: resume.pt, best.pt, spec.json, run.json, curves

Why the working files live in results/checkpoints/ and not beside model.pt: DVC and
Snakemake delete a stage's declared outputs before rerunning it, and a crashed run
must find its resume checkpoint *and* its best-so-far model again.  The best model is
copied into results/models/NAME/seedS/ at the end; the folder is then deleted (only the
last resume checkpoint and the selected model are ever kept on disk).

What it reads from the params is ``CONTRACT``'s record: the member's entry of ``models``
(``NO_RESULT_KEYS`` left out), ``data.val_size`` and ``compute``.  The same record is the MLflow
run's params, results/specs/NAME/seedS.json (what DVC's train stage depends on), the resume
checkpoint's ``spec.json`` and, hashed, every later file's ``spec_sha256`` (``contract.identity``).
A checkpoint made with other settings (``spec.json`` differs) is discarded, never
resumed.  The MLflow run id is kept in ``run.json`` so a resumed run continues the
same MLflow run; metrics are buffered and flushed right after each checkpoint, so no
step is logged twice.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from .. import interrupt, paths
from ..config.params import Params
from .contract import MEMBER, MODEL_RUNTIME, Bookkeeping, Contract


def outputs(params, name: str, seed: int) -> list[Path]:
    """The files of the module docstring (the resume folder aside: working files only)."""
    folder = paths.model_dir(name, seed)
    return [
        folder / "model.pt",
        folder / "info.json",
        folder / "metrics.json",
        paths.plot_file("train", name, seed),
        paths.plot_file("val", name, seed),
    ]


CONTRACT = Contract(
    stage="train",
    target="model",
    # the member's settings, its validation split and the speed switches: what can change a
    # trained model (``threads``, ``device``, ``experiment`` cannot: execution settings)
    reads=(MEMBER, "data.val_size", "compute"),
    code=("mma/stages/train.py", "mma/train", "mma/models", "mma/config/model.py", *MODEL_RUNTIME),
    inputs=lambda params, name, seed: [Path(params.data.root)],
    outputs=outputs,
    # dvc.yaml can depend on the whole `models` section only: one file per member holds its record
    bookkeeping=Bookkeeping("spec", paths.spec_file),
)


def checkpoint_dir(name: str, seed: int) -> Path:
    return paths.resume_file(name, seed).parent


def run_id_file(name: str, seed: int) -> Path:
    """Where the MLflow run id is kept while the run can be resumed."""
    return checkpoint_dir(name, seed) / "run.json"


def prepare(params: Params, name: str, seed: int, restart: bool = False) -> bool:
    """Keep a resumable checkpoint of these exact settings, discard any other (or any, with
    ``restart``); True if resuming.  Only the files a train run makes are deleted."""
    from ..io import write_json

    folder, record = checkpoint_dir(name, seed), CONTRACT.record(params, name, seed)
    spec_file = folder / "spec.json"
    if folder.exists() and restart:
        print(f"train {name}: --restart: discarding {folder}", file=sys.stderr)
        _discard(folder)
    if folder.exists():
        try:
            same = json.loads(spec_file.read_text()) == json.loads(json.dumps(record))
        except (OSError, ValueError):
            same = False
        if same:  # also without resume.pt (killed before the first checkpoint): keep the MLflow run id
            resuming = paths.resume_file(name, seed).exists()
            if resuming:
                print(f"train {name}: resuming from {paths.resume_file(name, seed)}", file=sys.stderr)
            return resuming
        print(f"train {name}: discarding {folder} (made with other settings)", file=sys.stderr)
        _discard(folder)
    write_json(spec_file, record)
    return False


WORKING_FILES = ("resume.pt", "best.pt", "spec.json", "run.json", "train.tsv", "val.tsv", "journal.jsonl")


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder, refusing if it holds anything a train run did not make."""
    from ..io import BadFileError

    foreign = [
        p.name
        for p in folder.iterdir()
        if p.name not in WORKING_FILES and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    ]
    if foreign:
        raise BadFileError(
            f"{folder}: holds files a train run did not make ({', '.join(sorted(foreign)[:3])}); "
            "nothing was deleted: move them elsewhere, then rerun"
        )
    shutil.rmtree(folder)


def percent(values: dict) -> dict:
    """The training loop logs accuracies as fractions; every file this stage writes (and the
    report) uses percent: ``*acc*`` keys × 100, the rest as they are."""
    return {
        k: (100.0 * v if "acc" in k and isinstance(v, (int, float)) and not isinstance(v, bool) else v)
        for k, v in values.items()
    }


class Curves:
    """The logged training/validation points (accuracies converted to percent on their way to
    MLflow and to the plots files), kept for the plots files: buffered like the
    MLflow metrics and appended to the checkpoint folder's TSVs at each flush (right after a
    checkpoint), so a resumed run's curves hold every step once."""

    def __init__(self, folder: Path, log=None, flush=None):
        self.folder, self._log, self._flush = folder, log, flush
        self.pending: dict[str, list[dict]] = {"train": [], "val": []}
        # every point also goes to a journal the moment it is logged: a kill after a checkpoint
        # but before its flush would otherwise lose the points the checkpoint covers (``recover``)
        self.journal = folder / "journal.jsonl"

    def log(self, values: dict, step: int) -> None:
        kind = "val" if any(k.startswith("val_") for k in values) else "train"
        row = {k: v for k, v in percent(values).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        with self.journal.open("a") as f:
            f.write(json.dumps({"kind": kind, "step": step, "values": {k: float(v) for k, v in row.items()}}) + "\n")
        self._add(kind, step, row)

    def _add(self, kind: str, step: int, row: dict) -> None:
        self.pending[kind].append({"step": step, **row})
        if self._log:  # MLflow gets percent too: one unit everywhere (evaluation reports percent)
            self._log(row, step)

    def recover(self, resumed_at: int, mlflow_steps=None) -> None:
        """Before (re)starting at step ``resumed_at``: journal points the checkpoint covers
        (step ≤ resumed_at) that the TSVs or MLflow lack are sent now; later ones are dropped
        (they are computed again).  ``mlflow_steps(key)``: the steps MLflow holds for ``key``."""
        if not self.journal.exists():
            return
        rows = []
        for line in self.journal.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line cut by the kill
                rows.append(json.loads(line))
        sent: dict[str, set] = {}
        for kind in ("train", "val"):
            path = self.folder / f"{kind}.tsv"
            in_tsv = (
                {int(float(line.split("\t")[0])) for line in path.read_text().splitlines()[1:] if line}
                if path.exists()
                else set()
            )
            for r in rows:
                if r["kind"] != kind or r["step"] > resumed_at or not r["values"]:
                    continue
                key = next(iter(r["values"]))
                if key not in sent:
                    sent[key] = set(mlflow_steps(key)) if mlflow_steps else set()
                if r["step"] not in in_tsv:
                    self.pending[kind].append({"step": r["step"], **r["values"]})
                if r["step"] not in sent[key] and self._log:
                    self._log(r["values"], r["step"])
        self.flush()

    def flush(self) -> None:
        for kind, rows in self.pending.items():
            if rows:
                path = self.folder / f"{kind}.tsv"
                header = path.read_text().splitlines()[0].split("\t") if path.exists() else list(rows[0])
                with path.open("a") as f:
                    if not path.stat().st_size:
                        f.write("\t".join(header) + "\n")
                    for r in rows:
                        f.write("\t".join(_cell(r.get(k)) for k in header) + "\n")
        self.pending = {"train": [], "val": []}
        if self._flush:
            self._flush()
        self.journal.unlink(missing_ok=True)  # everything in it is in the TSVs and sent

    def copy_to(self, name: str, seed: int) -> None:
        from ..io import write_text

        self.flush()
        for kind in ("train", "val"):
            src = self.folder / f"{kind}.tsv"
            write_text(paths.plot_file(kind, name, seed), src.read_text() if src.exists() else "step\n")


def _cell(v) -> str:
    return "" if v is None else f"{v:.6g}"


def finish(name: str, seed: int) -> None:
    """After a successful run: the resume state is no longer needed."""
    folder = checkpoint_dir(name, seed)
    for f in WORKING_FILES:  # only what a train run made; anything else (and so the folder) stays
        (folder / f).unlink(missing_ok=True)
        for tmp in folder.glob(f".{f}.*.tmp"):  # an atomic write of ours cut short by a kill
            tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def run(params: Params, name: str, seed: int, *, device: str, tracker=None, switches=None) -> dict[str, float]:
    """Train member (``name``, ``seed``) into the files of the module docstring (relative to the working
    folder).  ``tracker``: MLflow's (``mma.tracking.Tracker``) or anything with its ``log_metrics``, ``flush``
    and ``log_artifact``; ``switches``: the resolved compute switches (default: ``compute.resolve`` of
    ``params.compute`` for ``device``), recorded in model.pt and info.json."""
    from ..io import write_json
    from ..tracking import git_commit

    spec = params.member(name, seed)  # the seed drives the batches, the initialisation and the attacks' starts
    t0 = time.monotonic()
    data, batcher, val, sizes = _member_data(params, name, spec, device)
    result, curves, switches = _train_resumably(
        params, name, seed, spec, batcher, val, device=device, tracker=tracker, switches=switches
    )
    record = _publish_model(params, name, seed, curves)
    best = _selected_validation(result)
    _write_metrics_file(name, seed, result, best)
    info = {
        "model": name,
        "dataset": spec.dataset,
        "data": data,
        "norm": spec.norm,
        "method": spec.method,
        "seed": spec.seed,
        "selection_metric": result.selection_metric,
        "best_value": result.best_value,
        "selection": {**record.get("selection", {}), "best_step": result.best_step},
        "final": percent(result.history[-1]) if result.history else {},
        **sizes,
        "device": str(device),
        "wall_seconds_this_attempt": round(time.monotonic() - t0, 1),
        "git_commit": git_commit(),
        "params": CONTRACT.record(params, name, seed),
        "compute": switches.record(),
    }
    write_json(paths.model_dir(name, seed) / "info.json", info)
    metrics = {f"best_{k}": float(v) for k, v in best.items()}
    metrics["best_step"] = float(result.best_step)
    if tracker is not None:
        _report_to_tracker(tracker, name, seed, result, record.get("selection", {}), metrics)
    return metrics


def _member_data(params: Params, name: str, spec, device: str) -> tuple:
    """(data set name, training batcher, validation (x as float on ``device``, y), the sizes info.json
    records); a batch larger than the training split is a ParamsError naming the key to lower."""
    from ..config.data import data_name
    from ..config.params import ParamsError
    from ..data import TensorBatcher, load_split, to_float

    d = params.data
    data = data_name(params.data, spec.dataset)
    x, y = load_split(data, d.root, "train", val_size=d.val_size, limit=spec.train_limit)
    x_val, y_val = load_split(data, d.root, "val", val_size=d.val_size, limit=spec.val_limit)
    if spec.batch_size > len(x):
        where = f"models.{name}.batch_size"
        raise ParamsError(
            f"{where} = {spec.batch_size}: larger than the {len(x)} training images of {data} "
            f"(after data.val_size and train_limit); lower it"
        )
    batcher = TensorBatcher(x, y, spec.batch_size, seed=spec.seed, device=device, augment=spec.augment)
    val = (to_float(x_val, device), y_val.to(device))
    return data, batcher, val, {"train_examples": len(x), "val_examples": len(x_val)}


def _train_resumably(params: Params, name: str, seed: int, spec, batcher, val, *, device: str, tracker, switches):
    """Run the training loop from the resume checkpoint if there is one (the curves the checkpoint
    covers recovered first); (the loop's result, the curves, the compute switches it ran with)."""
    from .. import compute
    from ..train import train
    from ..train.loop import load_resume

    curves = Curves(checkpoint_dir(name, seed), *((tracker.log_metrics, tracker.flush) if tracker is not None else ()))
    resume = paths.resume_file(name, seed)
    curves.recover(
        load_resume(resume, f"mma train {name} --seed {seed} --restart")["result"]["step"] if resume.exists() else 0,
        _mlflow_steps(tracker),
    )
    best = checkpoint_dir(name, seed) / "best.pt"
    switches = switches or compute.resolve(params.compute, device)
    with interrupt.deferred():  # SIGTERM: the loop checkpoints the step in progress, then stops
        result = train(
            spec,
            batcher,
            val,
            model_path=best,
            resume_path=resume,
            device=device,
            log=curves.log,
            flush=curves.flush,
            show_progress=True,
            compute=switches,
        )
    if not best.exists():  # cannot happen unless validation never ran; say so rather than ship nothing
        raise RuntimeError(f"train {name}: no validated model at {best} after {result.step} steps")
    return result, curves, switches


def _publish_model(params: Params, name: str, seed: int, curves: Curves) -> dict:
    """The selected model, out of the resume folder, with who it is (checked by every reader), and the
    curves beside it; returns the selected model's record (its ``selection``: how it was chosen)."""
    from ..io import load_tensors, save_tensors
    from .contract import identity

    best = checkpoint_dir(name, seed) / "best.pt"
    record = load_tensors(best, remedy=f"rerun `mma train {name} --seed {seed} --restart`")
    save_tensors(paths.model_file(name, seed), {**record, "identity": identity(params, name, seed, "train")})
    curves.copy_to(name, seed)
    return record


def _selected_validation(result) -> dict:
    """The selected step's validation numbers (accuracies in %), warnings left out."""
    by_step = {h["step"]: h for h in result.history}
    return {
        k: v
        for k, v in percent(by_step.get(result.best_step, {})).items()
        if k.startswith("val_") and not k.startswith("val_warn")
    }


def _write_metrics_file(name: str, seed: int, result, best: dict) -> None:
    """The DVC metrics file: the selected model's validation numbers (accuracies in %), short names
    (val_clean, val_pgd, val_margin, val_adv); nothing that differs between identical runs."""
    from ..io import write_json

    short = {
        "val_clean_acc": "val_clean",
        "val_pgd_acc": "val_pgd",
        "val_mean_margin": "val_margin",
        "val_adv_acc": "val_adv",
    }
    summary = {"best_step": result.best_step, **{short.get(k, k): round(v, 4) for k, v in best.items()}}
    write_json(paths.model_dir(name, seed) / "metrics.json", summary)


def _report_to_tracker(tracker, name: str, seed: int, result, chosen: dict, metrics: dict) -> None:
    """The selection as MLflow tags, the best_* metrics (once per MLflow run, a resumed one included)
    and the model's files as artifacts; ``chosen``: the selected model's ``selection`` record."""
    if hasattr(tracker, "set_tags"):  # which checkpoint won, at which step, by which measure
        margin = chosen.get("metric") == "mean_margin"
        tracker.set_tags(
            {
                "mma.selected_by": result.selection_metric,
                "mma.selected_step": result.best_step,
                "mma.selection_measure": chosen.get("margin_attack", "") if margin else "",
                "mma.eval_every_steps": chosen.get("eval_every_steps", ""),
            }
        )
    if not _already_logged(tracker, result.step):
        tracker.log_metrics(metrics, step=result.step)  # at the last step, beside the training curves
    if hasattr(tracker, "logged"):
        tracker.logged.update(metrics)  # logged here or by the killed attempt: the CLI must not add them
    tracker.log_artifact(paths.model_file(name, seed), "model")
    for f in ("metrics.json", "info.json"):
        tracker.log_artifact(paths.model_dir(name, seed) / f, "model")


def _mlflow_steps(tracker):
    """``key -> steps`` the tracker's MLflow run already holds (None without a store)."""
    client = getattr(tracker, "client", None)
    if client is None:
        return None
    return lambda key: [m.step for m in client.get_metric_history(tracker.run_id, key)]


def _already_logged(tracker, step: int) -> bool:
    """True if this (resumed) MLflow run already holds best_step at ``step``: an attempt killed
    after its final flush logged the best_* metrics already (logging them again would be a
    second point at the same step)."""
    client = getattr(tracker, "client", None)
    if client is None:
        return False
    try:
        return any(m.step == step for m in client.get_metric_history(tracker.run_id, "best_step"))
    except Exception:  # noqa: BLE001 - no history (or no store): nothing was logged
        return False
