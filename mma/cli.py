"""``mma``: one subcommand per pipeline stage (dvc.yaml and the Snakefile only call these).

Every command validates its params file first: a bad file prints one line naming
the key and the value and exits with code 2 before anything is created.  Every other
expected failure (a missing, damaged or mismatched file between stages, a busy lock,
an unusable tracking store or output folder) leaves through one boundary, ``_errors``:
one line naming the file and what to rerun, exit code 2.  Each stage
invocation is one MLflow run (see ``mma.tracking``).  Nothing heavy (torch, mlflow)
is imported at module level, so ``mma --help`` answers instantly.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

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
    help="Params file to read (the params.yaml schema; presets/smoke.yaml and presets/quick.yaml are "
         "complete params files). Validated before any work.")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", metavar="DEVICE",
    help="Where tensors live: cpu, cuda, cuda:N or auto (cuda if available). Overrides params.device.")]
ModelArg = Annotated[str, typer.Argument(metavar="NAME", help="A model name: a key of the params file's `models`.")]
SeedOpt = Annotated[Optional[int], typer.Option(
    "--seed", metavar="S", min=0,
    help="Which training seed (one of the params file's `seeds`): each model is trained once per seed. "
         "Optional when `seeds` lists one.")]


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"mma {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Max-Margin Adversarial (MMA) training, reproduced: the pipeline's stages
    (data → train → transfer → evaluate → report). `dvc repro` or `snakemake` run them all."""


EXIT_USAGE = 2  # bad input: params, data, model name, tracking store
EXIT_FAILED = 1  # the work itself failed (e.g. training diverged)


# --------------------------------------------------------------------------- the stages
@dataclass(frozen=True)
class Stage:
    """One pipeline stage as the CLI runs it: ``mma.stages.<name>.run(params, [target, seed], ...)``
    inside one MLflow run.  ``target``: what it works on ("model": one member, a model of the
    grid × a seed; "role": a Table-1 role's source model × a seed; None: the whole grid)."""

    name: str
    target: Optional[str]
    device: bool  # takes --device
    resumable: bool = False  # train: prepare() a resume checkpoint first, finish() after


STAGES = {s.name: s for s in [
    Stage("data", None, device=False),
    Stage("train", "model", device=True, resumable=True),
    Stage("transfer", "role", device=True),
    Stage("evaluate", "model", device=True),
    Stage("report", None, device=False),
]}


def _logged(p, stage: str) -> dict:
    """The params a stage's MLflow run records (what it reads)."""
    sections = {"data": lambda: p.data.model_dump(mode="json"),
                "transfer": lambda: {"attacks": {k: a.model_dump(mode="json") for k, a in p.attacks.items()},
                                     "table1": p.table1.model_dump(mode="json"), "evaluate.loss": p.evaluate.loss},
                "evaluate": lambda: p.evaluate.model_dump(mode="json"),
                "report": lambda: p.report.model_dump(mode="json")}
    return sections[stage]()


def _outputs(p, stage: Stage, target: Optional[str], seed: Optional[int]) -> list[Path]:
    """The folders a stage writes (checked for writability before any work)."""
    from . import paths

    folders = {"data": lambda: [Path(p.data.root)],
               "train": lambda: [paths.model_dir(target, seed), paths.resume_file(target, seed).parent],
               "transfer": lambda: [paths.transfer_dir(target, seed)],
               "evaluate": lambda: [paths.eval_dir(target, seed)],
               "report": lambda: [paths.report_dir()]}[stage.name]()
    return folders + [f.parent for f in folders]  # outputs are built beside, then renamed into place


def _run_stage(stage: Stage, params_path: Path, target: Optional[str] = None, device: Optional[str] = None,
               restart: bool = False, seed: Optional[int] = None) -> None:
    """Validate (once), then run the stage in its MLflow run and print its headline numbers.
    Every expected failure, wherever it happens, leaves through ``_errors``: one line, exit 2."""
    with _errors():
        _stage(stage, params_path, target, device, restart, seed)


def _stage(stage: Stage, params_path: Path, target: Optional[str], device: Optional[str], restart: bool,
           seed: Optional[int]) -> None:
    from importlib import import_module

    from .config.data import data_name

    p = _load(params_path)
    tags: dict = {}
    model = None  # the model whose member the stage works on (transfer: the role's source)
    if stage.target is not None:
        model = p.source_model(target) if stage.target == "role" else target
        spec_ = _model(p, model)
        seed = p.pick_seed(seed)
        # mma.group: the model a member belongs to, so the members of one model are found together
        tags = {"mma.model": model, "mma.group": model, "mma.seed": seed, "mma.dataset": data_name(p.data, spec_.dataset),
                "mma.norm": spec_.norm, "mma.method": spec_.method}
        if stage.name in ("transfer", "evaluate"):
            tags["mma.eval_seed"] = p.seed  # the attacks' seed (params.seed); mma.seed: the model's training seed
        if stage.target == "role":
            tags["mma.role"] = target
    else:
        tags = {"mma.dataset": ",".join(sorted({data_name(p.data, m.dataset) for m in p.models.values()}))}
    member = f"{model} --seed {seed}" if model else ""
    if stage.target is not None and stage.name != "train":
        from .paths import model_file

        if not model_file(model, seed).exists():
            _fail(f"{model_file(model, seed)}: {model} (seed {seed}) is not trained yet; run `mma train {member}` first")
    kwargs = {}
    if stage.device:
        kwargs["device"] = tags["mma.device"] = _device(p, device)
    from .stages.files import ensure_writable, refuse_foreign, stage_lock

    outputs = _outputs(p, stage, target, seed)
    ensure_writable(*outputs)
    module = import_module(f"mma.stages.{stage.name}")
    if hasattr(module, "ours"):  # its folder is replaced whole: one holding the user's files is refused now
        refuse_foreign(outputs[0], module.ours, stage.name)
    _preflight(p)
    args = (p,) if stage.target is None else (p, target, seed)
    # one invocation per member / role / report at a time: a second one is refused, never interleaved
    with stage_lock(stage.name, target or "all", seed):
        run_id_file = None
        if stage.resumable:
            from .stages.contract import spec_record

            resumed = module.prepare(p, target, seed, restart=restart)  # the first write: after every check
            tags["mma.resumed_from_checkpoint"] = str(resumed).lower()
            run_id_file, logged = module.run_id_file(target, seed), spec_record(p, target, seed)
        else:
            logged = _logged(p, stage.name)

        from .tracking import params_file_tag, stage_run

        tags = {"mma.params_file": params_file_tag(params_path), "mma.experiment": p.experiment, **tags}
        with stage_run(p.experiment, stage.name, name=model, seed=seed, tags=tags, params=logged,
                       run_id_file=run_id_file) as tracker:
            tracker.log_artifact(params_path, "params")  # the values used, kept after a temporary copy is gone
            metrics = module.run(*args, tracker=tracker, **kwargs) or {}
            # the stage's summary, unless the stage logged those keys itself (no duplicate points)
            tracker.log_metrics({k: v for k, v in metrics.items() if k not in tracker.logged})
        if stage.resumable:
            module.finish(target, seed)
    if metrics:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:8])
        print(f"{stage.name}{' ' + member if member else ''}: {shown}", file=sys.stderr)


# --------------------------------------------------------------------------- commands
@app.command()
def data(params: ParamsOpt = Path("params.yaml")) -> None:
    """Prepare and verify the datasets listed in data.datasets (under data.root).

    MNIST comes from $MMA_DATA_SOURCE if set, else data.mnist_source, else a torchvision
    download; CIFAR10 from data.cifar10_source (null = download, "synthetic", or a folder).
    """
    _run_stage(STAGES["data"], params)


RoleOpt = Annotated[Optional[str], typer.Option(
    "--role", metavar="ROLE", help="A Table-1 role (a key of table1.sources: MMA, PGD, STD, ...): its source model.")]


@app.command()
def spec(name: Annotated[Optional[str], typer.Argument(
             metavar="NAME", help="A model name: a key of the params file's `models`.")] = None,
         params: ParamsOpt = Path("params.yaml"), seed: SeedOpt = None,
         evaluate: Annotated[bool, typer.Option("--evaluate", help=(
             "Write results/specs/NAME/seedS.evaluate.json instead: what `mma evaluate NAME --seed S` reads "
             "(settings, and the hash of each transfer set of its threat model and seed)."))] = False,
         role: RoleOpt = None) -> None:
    """Write results/specs/NAME/seedS.json: the member's resolved settings (defaults filled in).

    Bookkeeping for DVC, which cannot depend on one model of the grid or on files chosen
    from the params: the train (evaluate) stage depends on this file, so editing one model
    (one source's transfer sets) reruns only what reads it. With --role ROLE instead of NAME:
    results/sources/ROLE/seedS.json, the role's source model and its model file's hash (what
    the transfer stage of ROLE depends on). Not an MLflow run.
    """
    with _errors():
        p = _load(params)
        if (name is None) == (role is None):
            _fail("give a model NAME or --role ROLE (one of them)")
        from .io import write_json

        seed = p.pick_seed(seed)
        if role is not None:
            from .paths import source_file
            from .stages.transfer import source_record

            write_json(source_file(role, seed), source_record(p, role, seed))
            return
        _model(p, name)
        if evaluate:
            from .paths import eval_spec_file
            from .stages.evaluate import inputs_record

            write_json(eval_spec_file(name, seed), inputs_record(p, name, seed))
            return
        from .stages.contract import spec_record
        from .paths import spec_file

        write_json(spec_file(name, seed), spec_record(p, name, seed))


@app.command()
def train(name: ModelArg, params: ParamsOpt = Path("params.yaml"), seed: SeedOpt = None, device: DeviceOpt = None,
          restart: Annotated[bool, typer.Option(
              "--restart", help="Discard the resume checkpoint in results/checkpoints/NAME/seedS/ (e.g. a corrupt "
                                "one) and train from step 0 in a new MLflow run.")] = False) -> None:
    """Train model NAME with seed S; writes results/models/NAME/seedS/{model.pt,metrics.json}.

    Resumable: after a crash or kill, the same command continues from the last resume
    checkpoint (results/checkpoints/NAME/seedS/) and the same MLflow run; --restart discards it.
    Only one `mma train NAME --seed S` runs at a time (a second one is refused).
    """
    _run_stage(STAGES["train"], params, name, device, restart=restart, seed=seed)


@app.command()
def transfer(source: Annotated[Optional[str], typer.Argument(
                 metavar="SOURCE", help="A source model named in table1.sources (or give --role).")] = None,
             params: ParamsOpt = Path("params.yaml"), seed: SeedOpt = None, role: RoleOpt = None,
             device: DeviceOpt = None) -> None:
    """Make the adversarial test sets of a Table-1 role's source model, seed S
    (results/transfer/ROLE/seedS/).

    One set per Table-1 row of its role (attack × ε); restarts are chosen on the source
    model only, as a transfer attacker would.
    """
    with _errors():
        if (source is None) == (role is None):
            _fail("give a SOURCE model or --role ROLE (one of them)")
        if role is None:
            role = _load(params).role_of(source)
    _run_stage(STAGES["transfer"], params, role, device, seed=seed)


@app.command()
def evaluate(name: ModelArg, params: ParamsOpt = Path("params.yaml"), seed: SeedOpt = None,
             device: DeviceOpt = None) -> None:
    """Evaluate model NAME, seed S (results/eval/NAME/seedS/): natural and white-box robust accuracy,
    the transfer sets of its threat model, robust accuracy vs ε, margins and checks."""
    _run_stage(STAGES["evaluate"], params, name, device, seed=seed)


@app.command()
def report(params: ParamsOpt = Path("params.yaml")) -> None:
    """Write Table 1 (markdown + CSV), Figure 3 and the summary under results/report/."""
    _run_stage(STAGES["report"], params)


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
    from .tracking import redact

    typer.echo(f"mma: error: {redact(message)}", err=True)  # no password of a URI, whatever said it
    raise typer.Exit(code)


def _load(path: Path):
    from .config.params import ParamsError, load_params

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
        _fail(" ".join(str(e).split()))


def _model(p, name: str):
    from .config.params import ParamsError

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
    """The CLI's one error boundary.  Expected failures (bad params, data, files between
    stages, the tracking store, the file system, a busy lock) print one line and exit 2;
    a diverged training exits 1; anything else is a bug: its traceback, then a hint."""
    from .data import DataError
    from .io import BadFileError
    from .config.params import ParamsError
    from .stages.files import BusyError
    from .tracking import TrackingError
    from .train import TrainingDiverged

    try:
        yield
    except typer.Exit:
        raise
    except DataError as e:  # mma.data speaks to Python callers (source=...); say what a user sets
        from .data import SOURCE_HINT

        hint = ("set $MMA_DATA_SOURCE (MNIST) or data.mnist_source / data.cifar10_source in the params file "
                "to a local folder holding the files, then rerun `mma data`")
        _fail(" ".join(str(e).replace(SOURCE_HINT, hint).split()))
    except TrainingDiverged as e:
        _fail(" ".join(str(e).split()), EXIT_FAILED)
    except (ParamsError, TrackingError, BadFileError, BusyError) as e:
        _fail(" ".join(str(e).split()))
    except OSError as e:  # the file system: full disk, read-only folder, permissions, a missing file
        from .io import NO_SPACE

        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        if e.errno in NO_SPACE:
            what = "no space left on device" + ("" if e.errno == NO_SPACE[0] else f" ({e.strerror})")
            _fail(f"{where}{what}; the previous outputs are as they were: free some space there (or point the "
                  "folder elsewhere), then rerun")
        _fail(f"{where}{e.strerror or type(e).__name__} ({type(e).__name__}); fix the file or folder "
              "(space, permissions) and rerun")
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to continue (train resumes from its last checkpoint)", 130)
    except Exception as e:  # noqa: BLE001
        problem = _tracking_problem(e)
        if problem:
            _fail(problem)
        import traceback

        traceback.print_exc()
        _fail(f"internal error ({type(e).__name__}); this is a bug in mma: please report it with the command "
              "and the traceback above", EXIT_FAILED)


def _tracking_problem(e: Exception) -> Optional[str]:
    """One line for an MLflow / database failure mid-stage (locked or read-only mlflow.db, a
    store that went away), else None."""
    names = {c.__name__ for c in type(e).__mro__}
    if not names & {"MlflowException", "OperationalError", "DatabaseError", "SQLAlchemyError", "RestException"}:
        return None
    from .tracking import tracking_uri

    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return (f"MLflow store {tracking_uri()} failed mid-stage ({type(e).__name__}: {first}); the stage's files "
            "are complete where it got that far: free the store (another program holding mlflow.db? read-only?) "
            "and rerun")


if __name__ == "__main__":  # python -m mma.cli
    app()
