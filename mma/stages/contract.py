"""What each stage reads, runs and writes: its contract, declared once in its module.

Every stage module (``mma.stages.data``, ``train``, ``transfer``, ``evaluate``, ``report``)
declares ``CONTRACT``, a ``Contract``:

    reads     the key paths of params.yaml it reads: a section ("attacks"), a key in one
              ("evaluate.test_limit"), or MEMBER, the ``models`` entry of the member it works on
    code      the code whose change can change its outputs (dvc.yaml ``deps:``)
    inputs    the files and folders of other stages it reads, as dvc.yaml names them
    outputs   what it writes (``mma.paths``)

From ``Contract.record(params, target, seed)``, the values of ``reads`` for one target and
seed, come, so that they cannot disagree:

  - the MLflow params of the stage's run (``mma.tracking`` flattens them to
    ``attacks.pgd40x1.steps``, ``evaluate.test_limit``, ``compute.precision``);
  - the Snakemake job's ``settings`` param (a job reruns when its record changes);
  - DVC's view: a stage's ``params:`` are its ``reads``, or, where dvc.yaml cannot depend on
    exactly what a stage reads (one model's entry of ``models``, a model file chosen by a
    role, the transfer sets of a target's threat model), a ``Bookkeeping`` stage writes the
    record and the md5 of those files to a small file the stage depends on instead;
  - the identity of its output files (``output_identity``: the sha256 of the record), which
    the stage that reads them checks against the params (``files.check_identity``).

tests/test_contract.py derives every stage's ``params:``, ``deps:`` and ``outs:`` from these
declarations and compares dvc.yaml and the Snakefile's rules with them.  Nothing here imports
torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..config.data import data_name
from ..config.model import NO_RESULT_KEYS

# in ``code``: what every stage that runs a model's attacks on the data runs (train, transfer,
# evaluate): the attacks, the speed switches that change how they compute, the graph path, the data
MODEL_RUNTIME = (
    "mma/stages/contract.py",
    "mma/attacks",
    "mma/compute.py",
    "mma/config/compute.py",
    "mma/graphs.py",
    "mma/data.py",
)
MEMBER = "models.NAME"  # in ``reads``: the member's entry of ``models`` (its seed set, NO_RESULT_KEYS left out)
MEMBER_KEY = "model"  # ...recorded under this key, so that every member's run has the same MLflow param names

Target = Optional[str]  # a model name (target "model"), a Table-1 role ("role") or None (the whole grid)
PathsOf = Callable[[Any, Target, Optional[int]], list]  # (params, target, seed) -> [Path]


def _none(params, target: Target = None, seed: Optional[int] = None) -> list:
    return []


@dataclass(frozen=True)
class Bookkeeping:
    """A cheap stage that writes, for one target and seed, what its stage reads but dvc.yaml
    cannot name: the stage's record, and the md5 of each file the params choose for it.  Its
    ``params:`` are its stage's ``reads``; the stage depends on the file it writes, so it
    reruns exactly when that file changes (an edit of one model's entry, a retrained source
    model, a new transfer set of its own threat model), never for another target's."""

    stage: str  # its dvc.yaml stage and Snakemake rule: spec, source, inputs
    file: Callable[[str, int], Path]  # (target, seed) -> where it writes (mma.paths)
    chosen: PathsOf = _none  # the files (or folders of files) the params choose for the target: hashed
    folders: tuple[Path, ...] = ()  # what DVC depends on instead of the chosen files: the folders holding them

    def code(self, owner: "Contract") -> tuple[str, ...]:
        """The code that makes its file: the schema (defaults filled in), the record, the declaration."""
        return ("mma/config", "mma/stages/contract.py", f"mma/stages/{owner.stage}.py")


@dataclass(frozen=True)
class Contract:
    """What a stage reads, runs and writes (see the module docstring)."""

    stage: str  # its `mma` command, dvc.yaml stage and Snakemake rule
    target: Optional[str]  # "model": a member (model × seed); "role": a Table-1 role's source × seed; None: the grid
    reads: tuple[str, ...]
    code: tuple[str, ...]
    inputs: PathsOf = _none
    outputs: PathsOf = _none
    swapped: Optional[Callable[[Target, Optional[int]], Path]] = None  # the folder it replaces whole, if any
    derived: Optional[Callable[[Any, Target, Optional[int]], dict]] = None  # what it derives per target, recorded too
    derived_from: tuple[str, ...] = ()  # key paths ``derived`` reads besides ``reads`` (DVC params; not recorded)
    bookkeeping: Optional[Bookkeeping] = None  # where its record reaches DVC, if not through ``params:``

    # ----------------------------------------------------------------- the record
    def record(self, params, target: Target = None, seed: Optional[int] = None) -> dict:
        """The values of ``reads`` for ``target`` and ``seed``, nested by key path as in params.yaml
        (defaults filled in), plus what the stage derives from them per target (``derived``)."""
        values = params.model_dump(mode="json")
        out: dict = {}
        for key in self.reads:
            if key == MEMBER:
                out[MEMBER_KEY] = params.member(target, seed).model_dump(mode="json", exclude=set(NO_RESULT_KEYS))
            else:
                *parents, leaf = key.split(".")
                node = out
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = _value_at(values, key, self.stage)
        if self.derived is not None:
            out.update(self.derived(params, target, seed))
        return out

    def record_hash(self, params, target: Target = None, seed: Optional[int] = None) -> str:
        return record_hash(self.record(params, target, seed))

    def bookkeeping_record(self, params, target: str, seed: int) -> dict:
        """What the bookkeeping stage writes: the record, and the md5 of every file the params
        choose for the target (None: not made yet)."""
        files = {}
        for path in self.bookkeeping.chosen(params, target, seed):
            for f in _files_in(Path(path)):
                files[str(f)] = hashlib.md5(f.read_bytes()).hexdigest() if f.is_file() else None
        return {
            "stage": self.stage,
            "target": target,
            "seed": seed,
            "reads": self.record(params, target, seed),
            "files": files,
        }

    # ----------------------------------------------------------------- as dvc.yaml declares it
    def dvc_params(self) -> list[str]:
        """``reads`` (and ``derived_from``) as DVC can depend on them: a member's entry is the
        whole ``models`` section."""
        return ["models" if key == MEMBER else key for key in (*self.reads, *self.derived_from)]

    def dvc_stage(self, params, target: Target = None, seed: Optional[int] = None) -> dict:
        """The ``params:``, ``deps:`` and ``outs:`` (metrics included) of this stage in dvc.yaml."""
        carried = [str(self.bookkeeping.file(target, seed))] if self.bookkeeping else []
        return {
            "params": [] if self.bookkeeping else self.dvc_params(),
            "deps": sorted([*carried, *map(str, self.inputs(params, target, seed)), *self.code]),
            "outs": sorted(map(str, self.outputs(params, target, seed))),
        }

    def dvc_bookkeeping_stage(self, target: str, seed: int) -> dict:
        """The same for its bookkeeping stage."""
        b = self.bookkeeping
        return {
            "params": self.dvc_params(),
            "deps": sorted([*map(str, b.folders), *b.code(self)]),
            "outs": [str(b.file(target, seed))],
        }


def identity(params, name: str, seed: int, stage: str) -> dict:
    """Who a file between stages is: the member it belongs to (model and seed), the sha256 of
    the train stage's record of it (``spec_sha256``: its resolved settings), the data it used
    and the stage that wrote it.  Readers compare it with the params entry they use it for."""
    from .train import CONTRACT as TRAIN  # train's module declares the member's record, and imports this one

    return {
        "model": name,
        "seed": seed,
        "spec_sha256": TRAIN.record_hash(params, name, seed),
        "data": data_name(params.data, params.model(name).dataset),
        "stage": stage,
    }


def output_identity(contract: Contract, params, target: str, seed: int) -> dict:
    """The identity an output file of ``contract``'s stage carries: its member's (the role's
    source model for transfer) and, unless the stage is train (whose record is the member's
    ``spec_sha256``), the sha256 of the stage's record for (``target``, ``seed``)."""
    model = params.source_model(target) if contract.target == "role" else target
    who = identity(params, model, seed, contract.stage)
    return who if contract.stage == "train" else {**who, "settings_sha256": contract.record_hash(params, target, seed)}


def record_hash(record: dict) -> str:
    """sha256 of a record as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _value_at(values: dict, key: str, stage: str) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"the {stage} stage's contract reads {key!r}, which params.yaml's schema does not have")
        node = node[part]
    return node


def _files_in(path: Path) -> list[Path]:
    """``path`` itself, or every file in the folder (sorted; names starting with '.' are work in
    progress or a tool's marks, never a stage's output)."""
    if not path.is_dir():
        return [path]
    return sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
