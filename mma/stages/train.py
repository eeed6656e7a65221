"""The train stage: one model of the grid, crash-safe and resumable.

    results/models/NAME/model.pt      best-on-validation weights (weights-only torch file: state_dict + spec)
    results/models/NAME/metrics.json  validation/training summary, resolved params, git commit, seed
    results/checkpoints/NAME/         while training only: resume.pt, best.pt, spec.json, run.json

Why the working files live in results/checkpoints/ and not beside model.pt: DVC and
Snakemake delete a stage's declared outputs before rerunning it, and a crashed run
must find its resume checkpoint *and* its best-so-far model again.  The best model is
copied into results/models/NAME/ at the end; the folder is then deleted (only the
last resume checkpoint and the selected model are ever kept on disk).

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
from ..params import Params, spec_record


def checkpoint_dir(name: str) -> Path:
    return paths.resume_file(name).parent


def run_id_file(name: str) -> Path:
    """Where the MLflow run id is kept while the run can be resumed."""
    return checkpoint_dir(name) / "run.json"


def prepare(params: Params, name: str, restart: bool = False) -> bool:
    """Keep a resumable checkpoint of these exact settings, discard any other (or any, with
    ``restart``); True if resuming.  Only the files a train run makes are deleted."""
    from ..io import write_json

    folder, record = checkpoint_dir(name), spec_record(params, name)
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
            resuming = paths.resume_file(name).exists()
            if resuming:
                print(f"train {name}: resuming from {paths.resume_file(name)}", file=sys.stderr)
            return resuming
        print(f"train {name}: discarding {folder} (made with other settings)", file=sys.stderr)
        _discard(folder)
    write_json(spec_file, record)
    return False


WORKING_FILES = ("resume.pt", "best.pt", "spec.json", "run.json")


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder, refusing if it holds anything a train run did not make."""
    from ..io import BadFileError

    foreign = [p.name for p in folder.iterdir() if p.name not in WORKING_FILES
               and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if foreign:
        raise BadFileError(f"{folder}: holds files a train run did not make ({', '.join(sorted(foreign)[:3])}); "
                           "nothing was deleted: move them elsewhere, then rerun")
    shutil.rmtree(folder)


def finish(name: str) -> None:
    """After a successful run: the resume state is no longer needed."""
    folder = checkpoint_dir(name)
    for f in WORKING_FILES:  # only what a train run made; anything else (and so the folder) stays
        (folder / f).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def run(params: Params, name: str, *, device: str, tracker=None) -> dict[str, float]:
    from .. import compute
    from ..data import TensorBatcher, load_split, to_float
    from ..io import load_tensors, save_tensors, write_json
    from ..params import ParamsError, data_name, identity
    from ..train import train
    from ..tracking import git_commit

    spec = params.model(name)
    d = params.data
    t0 = time.monotonic()
    data = data_name(params, spec.dataset)
    x, y = load_split(data, d.root, "train", val_size=d.val_size, limit=spec.train_limit)
    x_val, y_val = load_split(data, d.root, "val", val_size=d.val_size, limit=spec.val_limit)
    if spec.batch_size > len(x):
        where = f"models[{params.model_names.index(name)}] ({name}).batch_size"
        raise ParamsError(f"{where} = {spec.batch_size}: larger than the {len(x)} training images of {data} "
                          f"(after data.val_size and train_limit); lower it")
    batcher = TensorBatcher(x, y, spec.batch_size, seed=spec.seed, device=device, augment=spec.augment)
    val = (to_float(x_val, device), y_val.to(device))

    log = flush = None
    if tracker is not None:
        log, flush = tracker.log_metrics, tracker.flush
    best = checkpoint_dir(name) / "best.pt"
    switches = compute.resolve(params.compute, device)
    with interrupt.deferred():  # SIGTERM: the loop checkpoints the step in progress, then stops
        result = train(spec, batcher, val, model_path=best, resume_path=paths.resume_file(name), device=device,
                       log=log, flush=flush, show_progress=True, compute=switches)
    if not best.exists():  # cannot happen unless validation never ran; say so rather than ship nothing
        raise RuntimeError(f"train {name}: no validated model at {best} after {result.step} steps")

    # the selected model, out of the resume folder, with who it is (checked by every reader)
    record = load_tensors(best, remedy=f"rerun `mma train {name} --restart`")
    save_tensors(paths.model_file(name), {**record, "identity": identity(params, name, "train")})
    by_step = {h["step"]: h for h in result.history}
    summary = {
        "model": name, "dataset": spec.dataset, "data": data, "norm": spec.norm, "method": spec.method, "seed": spec.seed,
        "steps": result.step, "selection_metric": result.selection_metric,
        "best_step": result.best_step, "best_value": result.best_value,
        "best": by_step.get(result.best_step, {}), "final": result.history[-1] if result.history else {},
        "train_examples": len(x), "val_examples": len(x_val), "device": str(device),
        "wall_seconds_this_attempt": round(time.monotonic() - t0, 1),
        "git_commit": git_commit(), "params": spec_record(params, name), "compute": switches.record(),
    }
    write_json(paths.model_dir(name) / "metrics.json", summary)
    metrics = {f"best_{k}": float(v) for k, v in summary["best"].items() if k != "step"}
    metrics["best_step"] = float(result.best_step)
    if tracker is not None:
        if not _already_logged(tracker, result.step):
            tracker.log_metrics(metrics, step=result.step)  # at the last step, beside the training curves
        if hasattr(tracker, "logged"):
            tracker.logged.update(metrics)  # logged here or by the killed attempt: the CLI must not add them
        tracker.log_artifact(paths.model_file(name), "model")
        tracker.log_artifact(paths.model_dir(name) / "metrics.json", "model")
    return metrics


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
