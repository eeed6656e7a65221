"""The whole of params.yaml (``Params``) and its loader (``load_params``).

One file drives every stage: ``mma <stage> --params FILE`` validates the whole file
before any work starts.  Every problem becomes ONE line naming the key path and the
bad value (``params.yaml: models.mnist-linf-pgd-0p3.pgd.eps = -0.3: must be > 0``);
the CLI prints it and exits 2 without creating or touching any output.

Presets (``presets/smoke.yaml``, ``presets/quick.yaml``) are complete params files
with the same schema, never overlays: a stage reads one file, so a preset replaces the
grid whole.  ``models`` maps each model's name to its settings and ``seeds`` lists the
training seeds: every model is trained once per seed, each (name, seed) a *member* with
its own stages (DVC's ``matrix`` names them ``train@mnist-linf-std-0``), files
(``mma.paths``) and MLflow run.  Each section's schema is its own module of this package;
this one assembles them and checks what spans sections (names, references, data × model).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import pydantic
from pydantic import BaseModel, Field, ValidationError, field_validator

from . import NonNegativeInt, ParamsError, Strict, short
from .compute import ComputeParams
from .data import DataParams
from .evaluation import AttackSetting, EvaluateParams, ReportParams, Table1Params, paper_attacks
from .model import ModelSpec
from .reader import read_yaml

__all__ = ["NAME_PATTERN", "Params", "ParamsError", "Seed", "check_name", "load_params"]

# seeds reach torch.manual_seed (below 2**64) and numpy's legacy seeding (below 2**32)
Seed = Annotated[int, pydantic.Strict(), Field(ge=0, le=2**32 - 1)]


class Params(Strict):
    """The whole of params.yaml."""

    experiment: str = Field("mma", min_length=1, max_length=200)  # MLflow experiment: one per pipeline
    seed: Seed = 0  # the evaluation's and the data's seed (attacks' random starts, synthetic data)
    # training seeds: every model is trained once per seed (the paper: one); a model entry sets none
    seeds: list[Seed] = Field([0], min_length=1, max_length=100)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda if available, else cpu
    threads: NonNegativeInt = Field(0, le=1024)  # torch CPU threads per process; 0: leave torch's default
    compute: ComputeParams = ComputeParams()  # speed switches (precision, channels_last, ...): mma/compute.py
    data: DataParams = DataParams()
    models: dict[str, ModelSpec] = Field(min_length=1)  # the grid: name → settings, one trained model each
    attacks: dict[str, AttackSetting] = Field(default_factory=paper_attacks)  # every attack setting, by name
    table1: Table1Params = Table1Params()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            raise ValueError(f"seed {twice[0]} is listed twice; list each training seed once")
        return seeds

    @field_validator("models", mode="before")
    @classmethod
    def _names_from_keys(cls, models: Any) -> Any:
        """Each model's ``name`` is its key in ``models`` (written there, it must equal the key)."""
        if isinstance(models, list) and all(isinstance(m, ModelSpec) for m in models):
            return {m.name: m for m in models}  # built in Python (tests): keyed by their names
        if isinstance(models, list):
            raise ValueError(
                "must be a mapping NAME → settings (models: {mnist-linf-std: {dataset: mnist, ...}}), not a list"
            )
        if isinstance(models, dict):
            for k, v in models.items():
                if isinstance(v, dict) and "seed" in v:  # the seed of a member comes from `seeds`
                    raise ValueError(
                        f"{k}.seed = {short(v['seed'])}: a model entry sets no seed; list the "
                        "training seeds in the top-level `seeds:` (every model is trained once per seed)"
                    )
            return {k: {"name": k, **v} if isinstance(v, dict) else v for k, v in models.items()}
        return models

    def model(self, name: str) -> ModelSpec:
        spec = self.models.get(name)
        if spec is None:
            raise ParamsError(f"no model named {name!r} in the grid; models: {', '.join(self.model_names)}")
        return spec

    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    def member(self, name: str, seed: int) -> ModelSpec:
        """Model ``name`` as trained with seed ``seed`` (one of ``seeds``): its spec with that seed."""
        spec = self.model(name)
        if seed not in self.seeds:
            raise ParamsError(
                f"seed {seed} is not in the grid's seeds {self.seeds}; pick one of those (or add it to `seeds:`)"
            )
        return spec.model_copy(update={"seed": seed})

    def members(self) -> list[tuple[str, int]]:
        """Every (model name, seed) the pipeline trains, model by model."""
        return [(name, seed) for name in self.models for seed in self.seeds]

    def pick_seed(self, seed: Optional[int]) -> int:
        """The seed a command works on: ``seed`` if given (and in ``seeds``), else the only seed."""
        if seed is None:
            if len(self.seeds) == 1:
                return self.seeds[0]
            raise ParamsError(
                f"the grid has {len(self.seeds)} seeds ({', '.join(map(str, self.seeds))}); pass --seed S to pick one"
            )
        if seed not in self.seeds:
            raise ParamsError(f"--seed {seed}: not one of the grid's seeds ({', '.join(map(str, self.seeds))})")
        return seed

    def source_model(self, role: str) -> str:
        """The model whose transfer sets Table-1 role ``role`` makes."""
        source = self.table1.sources.get(role)
        if source is None:
            raise ParamsError(f"{role!r} is not a role of table1.sources (roles: {', '.join(self.table1.sources)})")
        return source.model

    def role_of(self, source: str) -> str:
        """The Table-1 role whose source is model ``source`` (one role per source model)."""
        for role, s in self.table1.sources.items():
            if s.model == source:
                return role
        raise ParamsError(
            f"{source!r} is not a source in table1.sources (sources: "
            f"{', '.join(s.model for s in self.table1.sources.values()) or 'none'})"
        )

    def curve_attack(self) -> AttackSetting:
        """Figure 3's white-box attack (``evaluate.curve_attack``)."""
        return self.attacks[self.evaluate.curve_attack]


# --------------------------------------------------------------------------- loading
def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate a params file; any problem raises ParamsError (one line)."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{path}: expected a mapping of keys (experiment, data, models, ...), got {type(raw).__name__}"
        )
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(f"{path}: {_first_error(e, raw)}") from None
    problem = _cross_check(params)
    if problem:
        raise ParamsError(f"{path}: {problem}")
    return params


# Every name a user gives that becomes a folder or file name, a DVC stage key or an MLflow key:
# models, Table-1 roles and attack settings (transfer sets are files named after them).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def check_name(where: str, name: Any) -> Optional[str]:
    """None if ``name`` fits NAME_PATTERN, else the one-line problem at key path ``where``."""
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return None
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name.replace(".", "p")):
        # DVC's -S (Hydra's override grammar) splits keys at every dot, with no quoting
        return (
            f"{where}: a name cannot hold a '.' (`dvc exp run -S KEY.NAME.FIELD=VALUE` splits at dots, so it "
            f"could not be set by name); write the number with a 'p': {name.replace('.', 'p')!r}"
        )
    return (
        f"{where}: {short(name)} is not a name: a name is a folder name, a file name, a DVC stage key and an "
        "MLflow key, so it holds letters, digits, '_' and '-' only (starting with a letter or digit, at most "
        "100 characters)"
    )


def _cross_check(p: Params) -> Optional[str]:
    """Checks that span keys (pydantic checks each block alone)."""
    seen = list(p.models)  # names, in the file's order
    names = (
        [(f"models.{k}", k) for k in p.models]
        + [(f"table1.sources.{k}", k) for k in p.table1.sources]
        + [(f"attacks.{k}", k) for k in p.attacks]
    )
    for where, name in names:
        problem = check_name(where, name)
        if problem:
            return problem
    for key, m in p.models.items():
        where = f"models.{key}"
        if m.name != key:
            return f"{where}.name = {m.name!r}: differs from its key (leave `name` out: the key is the name)"
        if m.dataset not in p.data.datasets:
            return (
                f"{where}.dataset = {m.dataset!r}: not in data.datasets {p.data.datasets}; "
                f"add it there so the data stage prepares it"
            )
        if p.evaluate.threat_model(m.dataset, m.norm) is None:
            return (
                f"{where}.norm = {m.norm!r}: evaluate.threat_models has no {m.dataset} × {m.norm} entry "
                f"to evaluate it with"
            )
        if m.dataset == "mnist" and m.arch != "lenet5_madry" or m.dataset == "cifar10" and m.arch == "lenet5_madry":
            return f"{where}.arch = {m.arch!r}: not an architecture for {m.dataset}"
    if (
        "cifar10" in p.data.datasets
        and p.data.cifar10_source == "synthetic"
        and p.data.val_size >= p.data.synthetic_train
    ):
        return (
            f"data.val_size = {p.data.val_size}: must be below data.synthetic_train "
            f"({p.data.synthetic_train}) or no training images are left"
        )
    for key, name in _referenced_models(p):
        if name not in seen:
            return f"{key} = {name!r}: no model of that name in the grid (models: {', '.join(seen)})"
    for key, attack in _referenced_attacks(p):
        if attack not in p.attacks:
            return f"{key} = {attack!r}: not a name in `attacks` (defined: {', '.join(p.attacks)})"
    threat_models = {(p.model(n).dataset, p.model(n).norm) for _, n in _referenced_models(p)}
    if len(threat_models) > 1:
        return (
            f"table1: its models must share one dataset × norm (Table 1 is one threat model), "
            f"got {sorted('-'.join(t) for t in threat_models)}"
        )
    return None


def _referenced_models(p: Params) -> list[tuple[str, str]]:
    """(key path, model name) for every model the table1 section names."""
    refs = [(f"table1.sources.{role}.model", s.model) for role, s in p.table1.sources.items()]
    refs += [(f"table1.columns.{name}", name) for name in p.table1.columns]
    return refs


def _referenced_attacks(p: Params) -> list[tuple[str, str]]:
    """(key path, attack name) for every attack the table1/evaluate sections name."""
    refs = [(f"table1.sources.{role}.attacks", a) for role, s in p.table1.sources.items() for a in s.attacks]
    return refs + [("evaluate.curve_attack", p.evaluate.curve_attack)]


def _first_error(e: ValidationError, raw: dict) -> str:
    """pydantic's first error as `key.path = value: problem`."""
    err = e.errors(include_url=False)[0]
    loc = [part for part in err["loc"] if not (isinstance(part, str) and "[" in part)]  # drop union tags
    key = _key_path(loc, raw)
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(Params, loc[:-1])
        return f"{key}: unknown key (value {short(value)}); allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if isinstance(value, dict) and loc and err["type"] == "value_error":
        field = msg.split(" = ", 1)[0]
        if field in value or field.split(".", 1)[0] in value:  # names one of its keys: "eps_min = 0.5: ..."
            return f"{key}.{msg}"
        return f"{key}: {msg}"  # a whole-block check (e.g. method 'pgd' needs a 'pgd:' block)
    return f"{key} = {short(value)}: {msg}"


def _key_path(loc: list, raw: Any) -> str:
    """('models', 'mnist-linf-pgd-0p3', 'pgd', 'eps') -> 'models.mnist-linf-pgd-0p3.pgd.eps';
    a list index as ``[i] (its name)``."""
    out, node = "", raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _allowed_keys(cls: type[BaseModel], loc: list) -> list[str]:
    keyed = False  # the previous part was a dict field: this part is one of its keys
    for part in loc:
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        field = cls.model_fields.get(part)
        nested = _model_in(field.annotation) if field else None
        if nested is None:
            return []
        keyed = get_origin(field.annotation) is dict
        cls = nested
    return sorted(cls.model_fields)


def _model_in(annotation) -> Optional[type[BaseModel]]:
    """The BaseModel class inside Optional[...] / list[...] annotations, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, list, Optional) or get_args(annotation):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
