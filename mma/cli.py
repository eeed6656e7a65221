"""``mma``: one subcommand per pipeline stage (dvc.yaml and the Snakefile only call these).

Every command validates its params file first: a bad file prints one line naming
the key and the value and exits with code 2 before anything is created.  Each stage
invocation is one MLflow run (see ``mma.tracking``).  Nothing heavy (torch, mlflow)
is imported at module level, so ``mma --help`` answers instantly.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

app = typer.Typer(
    name="mma",
    help="Max-Margin Adversarial (MMA) training, reproduced: the pipeline's stages "
         "(data → train → transfer → evaluate → report). `dvc repro` or `snakemake` run them all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ParamsOpt = Annotated[Path, typer.Option(
    "--params", "-p", metavar="FILE",
    help="Params file to read (the params.yaml schema; profiles/smoke.yaml and profiles/quick.yaml are "
         "complete params files). Validated before any work.")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", metavar="DEVICE",
    help="Where tensors live: cpu, cuda, cuda:N or auto (cuda if available). Overrides params.device.")]
ModelArg = Annotated[str, typer.Argument(metavar="NAME", help="A model name from the params file's `models` list.")]

EXIT_USAGE = 2  # bad input: params, data, model name, tracking store
EXIT_FAILED = 1  # the work itself failed (e.g. training diverged)


# --------------------------------------------------------------------------- commands
@app.command()
def data(params: ParamsOpt = Path("params.yaml")) -> None:
    """Prepare and verify the datasets listed in data.datasets (under data.root).

    MNIST comes from $MMA_DATA_SOURCE if set, else data.mnist_source, else a torchvision
    download; CIFAR10 from data.cifar10_source (null = download, "synthetic", or a folder).
    """
    p = _load(params)

    def body(tracker):
        from .stages import data as stage

        return stage.run(p, tracker=tracker)

    _execute(p, params, "data", body, logged=p.data.model_dump(mode="json"),
             tags={"mma.dataset": ",".join(p.data.datasets)})


@app.command()
def spec(name: ModelArg, params: ParamsOpt = Path("params.yaml")) -> None:
    """Write results/specs/NAME.json: the model's resolved settings (defaults filled in).

    Bookkeeping for DVC, which cannot track one element of the `models` list: the train
    stage depends on this file, so editing one model reruns only that model. Not an
    MLflow run.
    """
    p = _load(params)
    _model(p, name)
    from .io import write_json
    from .params import spec_record
    from .paths import spec_file

    write_json(spec_file(name), spec_record(p, name))


@app.command()
def train(name: ModelArg, params: ParamsOpt = Path("params.yaml"), device: DeviceOpt = None) -> None:
    """Train model NAME; writes results/models/NAME/{model.pt,metrics.json}.

    Resumable: after a crash or kill, the same command continues from the last resume
    checkpoint (results/checkpoints/NAME/) and the same MLflow run.
    """
    p = _load(params)
    spec_ = _model(p, name)
    from .params import spec_record
    from .stages import train as stage

    dev = _device(p, device)
    _preflight(p)
    resuming = stage.prepare(p, name)  # the first write: after every check

    def body(tracker):
        return stage.run(p, name, device=dev, tracker=tracker)

    _execute(p, params, "train", body, name=name, logged=spec_record(p, name), run_id_file=stage.run_id_file(name),
             tags={"mma.model": name, "mma.dataset": spec_.dataset, "mma.norm": spec_.norm,
                   "mma.method": spec_.method, "mma.device": dev, "mma.resumed_from_checkpoint": str(resuming).lower()})
    stage.finish(name)


@app.command()
def transfer(source: Annotated[str, typer.Argument(metavar="SOURCE", help="A source model named in transfer.sources.")],
             params: ParamsOpt = Path("params.yaml"), device: DeviceOpt = None) -> None:
    """Make the adversarial test sets of source model SOURCE (results/transfer/SOURCE/).

    One set per (attack setting, ε) of its transfer.sources entry; restarts are chosen on
    the source model only, as a transfer attacker would.
    """
    p = _load(params)
    spec_ = _model(p, source)
    entry = p.transfer.source(source)
    if entry is None:
        _fail(f"{source!r} is not a source in transfer.sources (sources: "
              f"{', '.join(s.model for s in p.transfer.sources) or 'none'})")
    dev = _device(p, device)

    def body(tracker):
        from .stages import transfer as stage

        return stage.run(p, source, device=dev, tracker=tracker)

    _execute(p, params, "transfer", body, name=source, logged=p.transfer.model_dump(mode="json"),
             tags={"mma.model": source, "mma.dataset": spec_.dataset, "mma.norm": spec_.norm,
                   "mma.role": entry.role, "mma.device": dev})


@app.command()
def evaluate(name: ModelArg, params: ParamsOpt = Path("params.yaml"), device: DeviceOpt = None) -> None:
    """Evaluate model NAME (results/eval/NAME/): natural and white-box robust accuracy,
    the transfer sets of its threat model, robust accuracy vs ε, margins and checks."""
    p = _load(params)
    spec_ = _model(p, name)
    dev = _device(p, device)

    def body(tracker):
        from .stages import evaluate as stage

        return stage.run(p, name, device=dev, tracker=tracker)

    _execute(p, params, "evaluate", body, name=name, logged=p.evaluate.model_dump(mode="json"),
             tags={"mma.model": name, "mma.dataset": spec_.dataset, "mma.norm": spec_.norm, "mma.device": dev})


@app.command()
def report(params: ParamsOpt = Path("params.yaml")) -> None:
    """Write Table 1 (markdown + CSV), Figure 3 and the summary under results/report/."""
    p = _load(params)

    def body(tracker):
        from .stages import report as stage

        return stage.run(p, tracker=tracker)

    _execute(p, params, "report", body, logged=p.report.model_dump(mode="json"),
             tags={"mma.dataset": ",".join(sorted({m.dataset for m in p.models}))})


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="A short run (under 5 minutes on 2 CPU cores) instead of "
                                        "the full benchmark (~15 minutes).")] = False,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="cpu, cuda, cuda:N or auto.")] = "auto",
    json_path: Annotated[Optional[Path], typer.Option("--json", metavar="FILE",
                                                      help="Also write the results to FILE as JSON.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help=(
        "torch CPU threads (default: torch's). On a shared machine 1 thread is often faster: "
        "see docs/performance.md."))] = None,
) -> None:
    """Time the attacks and training steps (and compare with peer implementations)."""
    from .bench import run

    dev = _resolve_device(device)
    with _errors():
        run(quick=quick, device=dev, json_path=json_path, threads=threads)


# --------------------------------------------------------------------------- helpers
def _fail(message: str, code: int = EXIT_USAGE):
    typer.echo(f"mma: error: {message}", err=True)
    raise typer.Exit(code)


def _load(path: Path):
    from .params import ParamsError, load_params

    try:
        return load_params(path)
    except ParamsError as e:
        _fail(str(e))


def _preflight(p) -> None:
    """Open the tracking store (an unreachable server fails here, in seconds): after the
    input checks, before the first write."""
    from .tracking import TrackingError, open_store, tracking_uri

    try:
        open_store(p.experiment, tracking_uri())
    except TrackingError as e:
        _fail(str(e))


def _model(p, name: str):
    from .params import ParamsError

    try:
        return p.model(name)
    except ParamsError as e:
        _fail(str(e))


def _device(p, override: Optional[str]) -> str:
    return _resolve_device(override or p.device, threads=p.threads)


def _resolve_device(choice: str, threads: int = 0) -> str:
    """auto → cuda if available else cpu; an explicit cuda without a GPU is an error."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        _fail(f"device {choice!r} requested but no CUDA GPU is available; use --device cpu")
    if choice != "cpu" and not choice.startswith("cuda"):
        _fail(f"device {choice!r}: expected cpu, cuda, cuda:N or auto")
    return choice


@contextlib.contextmanager
def _errors():
    """Known failures as one line: bad input → exit 2, failed work → exit 1."""
    from .data import DataError
    from .io import UnsafeFileError
    from .params import ParamsError
    from .tracking import TrackingError
    from .train import TrainingDiverged

    try:
        yield
    except (ParamsError, DataError, TrackingError, UnsafeFileError, FileNotFoundError) as e:
        _fail(" ".join(str(e).split()))
    except TrainingDiverged as e:
        _fail(" ".join(str(e).split()), EXIT_FAILED)


def _execute(p, params_path: Path, stage: str, body: Callable, *, name: Optional[str] = None,
             logged: Optional[dict] = None, tags: Optional[dict] = None, run_id_file: Optional[Path] = None) -> None:
    """Run ``body(tracker)`` inside one MLflow run and log the metrics it returns."""
    from .tracking import stage_run

    _preflight(p)
    tags = {"mma.params_file": str(Path(params_path).resolve()), "mma.experiment": p.experiment, **(tags or {})}
    with _errors(), stage_run(p.experiment, stage, name=name, tags=tags, params=logged,
                              run_id_file=run_id_file) as tracker:
        metrics = body(tracker) or {}
        # the stage's summary, unless the stage logged those keys itself (no duplicate points)
        tracker.log_metrics({k: v for k, v in metrics.items() if k not in tracker.logged})
    if metrics:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:8])
        print(f"{stage}{' ' + name if name else ''}: {shown}", file=sys.stderr)


if __name__ == "__main__":  # python -m mma.cli
    app()
