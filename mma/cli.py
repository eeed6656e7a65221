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

ParamsOpt = Annotated[
    Path,
    typer.Option(
        "--params",
        "-p",
        metavar="FILE",
        help="Params file to read (the params.yaml schema; presets/smoke.yaml and presets/quick.yaml are "
        "complete params files). Validated before any work.",
    ),
]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--device",
        metavar="DEVICE",
        help="Where tensors live: cpu, cuda, cuda:N or auto (cuda if available). Overrides params.device.",
    ),
]
ModelArg = Annotated[str, typer.Argument(metavar="NAME", help="A model name: a key of the params file's `models`.")]
SeedOpt = Annotated[
    Optional[int],
    typer.Option(
        "--seed",
        metavar="S",
        min=0,
        help="Which training seed (one of the params file's `seeds`): each model is trained once per seed. "
        "Optional when `seeds` lists one.",
    ),
]


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"mma {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Max-Margin Adversarial (MMA) training, reproduced: the pipeline's stages
    (data → train → transfer → evaluate → report). `dvc repro` or `snakemake` run them all."""


EXIT_USAGE = 2  # bad input: params, data, model name, tracking store
EXIT_FAILED = 1  # the work itself failed (e.g. training diverged)


# --------------------------------------------------------------------------- the stages
@dataclass(frozen=True)
class Stage:
    """One pipeline stage as the CLI runs it: its module's ``run(params, [target, seed], ...)``
    inside one MLflow run whose params are the module's ``CONTRACT.record`` (what it reads)."""

    name: str
    device: bool  # takes --device
    resumable: bool = False  # train: prepare() a resume checkpoint first, finish() after

    @property
    def module(self):
        """mma.stages.<name>, from the static table of the stage modules."""
        from .stages import MODULES

        return MODULES[self.name]


STAGES = {
    s.name: s
    for s in [
        Stage("data", device=False),
        Stage("train", device=True, resumable=True),
        Stage("transfer", device=True),
        Stage("evaluate", device=True),
        Stage("report", device=False),
    ]
}


def _writable(stage: Stage, p, target: Optional[str], seed: Optional[int]) -> list[Path]:
    """The folders a stage writes in, checked for writability before any work: each output's
    folder (outputs are built beside, then renamed into place), an existing output folder
    itself, and the resume folder of a resumable stage."""
    outputs = stage.module.CONTRACT.outputs(p, target, seed)
    folders = [o.parent for o in outputs] + [o for o in outputs if o.is_dir()]
    if stage.resumable:
        folders.append(stage.module.checkpoint_dir(target, seed))
    return list(dict.fromkeys(folders))


def _tags(p, contract, target: Optional[str], seed: Optional[int]) -> dict:
    """The MLflow tags that find a run: the member (model, seed) and its kind, or the grid's data."""
    from .config.data import data_name

    if contract.target is None:
        return {"mma.dataset": ",".join(sorted({data_name(p.data, m.dataset) for m in p.models.values()}))}
    model = p.source_model(target) if contract.target == "role" else target
    spec_ = p.model(model)
    # mma.group: the model a member belongs to, so the members of one model are found together
    tags = {
        "mma.model": model,
        "mma.group": model,
        "mma.seed": seed,
        "mma.dataset": data_name(p.data, spec_.dataset),
        "mma.norm": spec_.norm,
        "mma.method": spec_.method,
    }
    if contract.stage in ("transfer", "evaluate"):
        tags["mma.eval_seed"] = p.seed  # the attacks' seed (params.seed); mma.seed: the model's training seed
    if contract.target == "role":
        tags["mma.role"] = target
    return tags


def _run_stage(
    stage: Stage,
    params_path: Path,
    target: Optional[str] = None,
    device: Optional[str] = None,
    restart: bool = False,
    seed: Optional[int] = None,
) -> None:
    """Validate (once), then run the stage in its MLflow run and print its headline numbers.
    Every expected failure, wherever it happens, leaves through ``_errors``: one line, exit 2."""
    with _errors():
        _stage(stage, params_path, target, device, restart, seed)


def _stage(
    stage: Stage, params_path: Path, target: Optional[str], device: Optional[str], restart: bool, seed: Optional[int]
) -> None:
    p = _load(params_path)
    module = stage.module
    contract = module.CONTRACT
    model = None  # the model whose member the stage works on (transfer: the role's source)
    if contract.target is not None:
        model = p.source_model(target) if contract.target == "role" else target
        _model(p, model)
        seed = p.pick_seed(seed)
    tags = _tags(p, contract, target, seed)
    member = f"{model} --seed {seed}" if model else ""
    if model is not None and stage.name != "train":
        from .paths import model_file

        if not model_file(model, seed).exists():
            _fail(
                f"{model_file(model, seed)}: {model} (seed {seed}) is not trained yet; run `mma train {member}` first"
            )
    kwargs = {}
    if stage.device:
        kwargs["device"] = tags["mma.device"] = _device(p, device)
    from .stages.files import ensure_writable, refuse_foreign, stage_lock

    ensure_writable(*_writable(stage, p, target, seed))
    if contract.swapped is not None:  # its folder is replaced whole: one holding the user's files is refused now
        refuse_foreign(contract.swapped(target, seed), module.ours, stage.name)
    _preflight(p)
    args = (p,) if contract.target is None else (p, target, seed)
    # one invocation per member / role / report at a time: a second one is refused, never interleaved
    with stage_lock(stage.name, target or "all", seed):
        run_id_file = None
        if stage.resumable:
            resumed = module.prepare(p, target, seed, restart=restart)  # the first write: after every check
            tags["mma.resumed_from_checkpoint"] = str(resumed).lower()
            run_id_file = module.run_id_file(target, seed)

        from .tracking import params_file_tag, stage_run

        tags = {"mma.params_file": params_file_tag(params_path), "mma.experiment": p.experiment, **tags}
        # the run's params: everything the stage reads from the params file, for this target and seed
        with stage_run(
            p.experiment,
            stage.name,
            name=model,
            seed=seed,
            tags=tags,
            params=contract.record(p, target, seed),
            run_id_file=run_id_file,
        ) as tracker:
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


RoleOpt = Annotated[
    Optional[str],
    typer.Option(
        "--role", metavar="ROLE", help="A Table-1 role (a key of table1.sources: MMA, PGD, STD, ...): its source model."
    ),
]


BOOKKEPT = ("train", "transfer", "evaluate")  # the stages whose reads reach DVC through a file


@app.command()
def spec(
    stage: Annotated[
        str, typer.Argument(metavar="STAGE", help="The stage whose reads to write: train, transfer or evaluate.")
    ],
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="What the stage works on: a model NAME (train, evaluate) or a Table-1 ROLE (transfer).",
        ),
    ],
    params: ParamsOpt = Path("params.yaml"),
    seed: SeedOpt = None,
) -> None:
    """Write what `mma STAGE TARGET --seed S` reads, for DVC: the values it reads from the
    params (defaults filled in) and the md5 of every file the params choose for it.

    \b
      mma spec train NAME      results/specs/NAME/seedS.json
      mma spec transfer ROLE   results/sources/ROLE/seedS.json (and the md5 of ROLE's source model file)
      mma spec evaluate NAME   results/specs/NAME/seedS.evaluate.json (and the md5 of each transfer set
                               of NAME's threat model and seed)

    dvc.yaml cannot depend on one model of the grid or on files chosen by the params, so each
    of these stages depends on its file instead: an edit of one model (a retrained source, a new
    set of a threat model) reruns only the stages that read it. Not an MLflow run.
    """
    with _errors():
        p = _load(params)
        if stage not in BOOKKEPT:
            _fail(f"STAGE {stage!r}: expected one of {', '.join(BOOKKEPT)}")
        contract = STAGES[stage].module.CONTRACT
        if contract.target == "role":
            p.source_model(target)  # a role of table1.sources, else one line naming the roles
        else:
            _model(p, target)
        from .io import write_json

        seed = p.pick_seed(seed)
        write_json(contract.bookkeeping.file(target, seed), contract.bookkeeping_record(p, target, seed))


@app.command()
def train(
    name: ModelArg,
    params: ParamsOpt = Path("params.yaml"),
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Discard the resume checkpoint in results/checkpoints/NAME/seedS/ (e.g. a corrupt "
            "one) and train from step 0 in a new MLflow run.",
        ),
    ] = False,
) -> None:
    """Train model NAME with seed S; writes results/models/NAME/seedS/{model.pt,metrics.json}.

    Resumable: after a crash or kill, the same command continues from the last resume
    checkpoint (results/checkpoints/NAME/seedS/) and the same MLflow run; --restart discards it.
    Only one `mma train NAME --seed S` runs at a time (a second one is refused).
    """
    _run_stage(STAGES["train"], params, name, device, restart=restart, seed=seed)


@app.command()
def transfer(
    source: Annotated[
        Optional[str], typer.Argument(metavar="SOURCE", help="A source model named in table1.sources (or give --role).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    seed: SeedOpt = None,
    role: RoleOpt = None,
    device: DeviceOpt = None,
) -> None:
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
def evaluate(
    name: ModelArg, params: ParamsOpt = Path("params.yaml"), seed: SeedOpt = None, device: DeviceOpt = None
) -> None:
    """Evaluate model NAME, seed S (results/eval/NAME/seedS/): natural and white-box robust accuracy,
    the transfer sets of its threat model, robust accuracy vs ε, margins and checks."""
    _run_stage(STAGES["evaluate"], params, name, device, seed=seed)


@app.command()
def report(params: ParamsOpt = Path("params.yaml")) -> None:
    """Write Table 1 (markdown + CSV), Figure 3 and the summary under results/report/."""
    _run_stage(STAGES["report"], params)


@app.command()
def bench(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="A short run (under 5 minutes on 2 CPU cores) instead of the full benchmark (~15 minutes)."
        ),
    ] = False,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="cpu, cuda, cuda:N or auto.")] = "auto",
    json_path: Annotated[
        Optional[Path], typer.Option("--json", metavar="FILE", help="Also write the results to FILE as JSON.")
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(
            "--threads",
            min=1,
            help=(
                "torch CPU threads (default: torch's). On a shared machine 1 thread is often faster: "
                "see docs/performance.md."
            ),
        ),
    ] = None,
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
    from .config.params import ParamsError
    from .data import DataError
    from .io import BadFileError
    from .stages.files import BusyError
    from .tracking import TrackingError
    from .train import TrainingDiverged

    try:
        yield
    except typer.Exit:
        raise
    except DataError as e:  # mma.data speaks to Python callers (source=...); say what a user sets
        from .data import SOURCE_HINT

        hint = (
            "set $MMA_DATA_SOURCE (MNIST) or data.mnist_source / data.cifar10_source in the params file "
            "to a local folder holding the files, then rerun `mma data`"
        )
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
            _fail(
                f"{where}{what}; the previous outputs are as they were: free some space there (or point the "
                "folder elsewhere), then rerun"
            )
        _fail(
            f"{where}{e.strerror or type(e).__name__} ({type(e).__name__}); fix the file or folder "
            "(space, permissions) and rerun"
        )
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to continue (train resumes from its last checkpoint)", 130)
    except Exception as e:  # noqa: BLE001
        problem = _tracking_problem(e)
        if problem:
            _fail(problem)
        import traceback

        traceback.print_exc()
        _fail(
            f"internal error ({type(e).__name__}); this is a bug in mma: please report it with the command "
            "and the traceback above",
            EXIT_FAILED,
        )


def _tracking_problem(e: Exception) -> Optional[str]:
    """One line for an MLflow / database failure mid-stage (locked or read-only mlflow.db, a
    store that went away), else None."""
    names = {c.__name__ for c in type(e).__mro__}
    if not names & {"MlflowException", "OperationalError", "DatabaseError", "SQLAlchemyError", "RestException"}:
        return None
    from .tracking import tracking_uri

    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return (
        f"MLflow store {tracking_uri()} failed mid-stage ({type(e).__name__}: {first}); the stage's files "
        "are complete where it got that far: free the store (another program holding mlflow.db? read-only?) "
        "and rerun"
    )


if __name__ == "__main__":  # python -m mma.cli
    app()
