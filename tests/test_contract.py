"""Each stage's contract (mma/stages/contract.py, declared in its module) is the one account
of what it reads, runs and writes: dvc.yaml's params/deps/outs and the Snakefile's job params
are derived from it here and must agree; the MLflow params, the bookkeeping files and the
identity of the files between stages come from its record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mma.config.params import load_params
from mma.stages import CONTRACTS, RECORDED
from mma.stages.contract import MEMBER, Contract, output_identity, record_hash

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "presets" / "smoke.yaml"


def _target_and_seed(dvc_name: str) -> tuple[str, str | None, int | None]:
    """'train@mnist-linf-pgd-0p3-0' -> ('train', 'mnist-linf-pgd-0p3', 0); 'report' -> ('report', None, None)."""
    kind, _, item = dvc_name.partition("@")
    if not item:
        return kind, None, None
    target, seed = item.rsplit("-", 1)
    return kind, target, int(seed)


def _declared(kind: str, params, target, seed) -> dict:
    """What a dvc.yaml stage of ``kind`` must declare, from the contracts alone."""
    if kind in CONTRACTS:
        return CONTRACTS[kind].dvc_stage(params, target, seed)
    owner = next(c for c in CONTRACTS.values() if c.bookkeeping and c.bookkeeping.stage == kind)
    return owner.dvc_bookkeeping_stage(target, seed)


def dvc_stages(repo: Path) -> dict[str, dict]:
    """Every stage DVC builds from dvc.yaml (its own parse: matrix and ${...} resolved)."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(repo)) as r:
        for stage in r.index.stages:
            params = [p for d in stage.deps if hasattr(d, "params") for p in (d.params or [])]
            deps = [str(d.def_path).rstrip("/") for d in stage.deps if not hasattr(d, "params")]
            out[stage.name] = {
                "params": sorted(params),
                "deps": sorted(deps),
                "outs": sorted(str(o.def_path).rstrip("/") for o in stage.outs),
            }
    return out


def test_dvc_yaml_declares_every_stage_as_its_contract():
    """params:, deps: and outs: (metrics included) of every stage of dvc.yaml, the bookkeeping
    stages spec/source/inputs too, are exactly what the contracts declare."""
    params = load_params(ROOT / "params.yaml")
    stages = dvc_stages(ROOT)
    kinds = {_target_and_seed(name)[0] for name in stages}
    assert kinds == set(CONTRACTS) | {c.bookkeeping.stage for c in CONTRACTS.values() if c.bookkeeping}
    for name, found in stages.items():
        kind, target, seed = _target_and_seed(name)
        want = _declared(kind, params, target, seed)
        assert found == {**want, "params": sorted(want["params"])}, f"dvc.yaml's {name} differs from its contract"


@pytest.mark.slow  # ~11 s: Snakemake parses the workflow
def test_snakemake_rules_read_what_the_contracts_declare():
    """Every rule's `settings` param is its contract's record (for a bookkeeping rule, that of
    the stage it writes for), job by job; train, transfer and evaluate have none and take their
    bookkeeping file as an input instead.  The rules are read by Snakemake itself."""
    from snakemake.api import SnakemakeApi
    from snakemake.iocontainers import Wildcards
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    params = load_params(SMOKE)
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[SMOKE]),
            storage_settings=StorageSettings(),
            snakefile=ROOT / "Snakefile",
            workdir=ROOT,
        )
        rules = {r.name: r for r in workflow._workflow.rules if r.name != "all"}
    assert set(rules) == set(RECORDED) | {c.stage for c in CONTRACTS.values()}
    for name, rule in rules.items():
        settings = dict(rule.params.items()).get("settings")
        if name not in RECORDED:
            bookkeeping = CONTRACTS[name].bookkeeping
            assert settings is None, f"rule {name}: its record is in its {bookkeeping.stage} file, not a param"
            pattern = "{role}" if CONTRACTS[name].target == "role" else "{name}"
            assert str(bookkeeping.file(pattern, "{seed}")) in map(str, rule.input), name
            continue
        contract = RECORDED[name]
        for target, seed in _targets(contract, params):
            wildcards = {"role" if contract.target == "role" else "name": target, "seed": str(seed)}
            job = Wildcards(fromdict=wildcards if target is not None else {})
            assert json.loads(settings(job)) == json.loads(json.dumps(contract.record(params, target, seed))), (
                f"rule {name} ({target}, seed {seed}) reads other values than its contract's record"
            )


def _targets(contract: Contract, params) -> list[tuple]:
    if contract.target == "model":
        return params.members()
    if contract.target == "role":
        return [(role, seed) for role in params.table1.sources for seed in params.seeds]
    return [(None, None)]


def test_a_record_holds_each_key_path_it_reads_and_nothing_else():
    """The record is params.yaml's values at the declared key paths (nested as in the file,
    defaults filled in), the member's entry under `model`, plus what the stage derives."""
    p = load_params(SMOKE)
    transfer = CONTRACTS["transfer"].record(p, "PGD", 0)
    assert transfer["evaluate"] == {
        "loss": p.evaluate.loss,
        "test_limit": p.evaluate.test_limit,
        "batch_size": p.evaluate.batch_size,
    }
    assert set(transfer["table1"]) == {"eps", "sources"} and transfer["seed"] == p.seed
    name, setting = next(iter(p.attacks.items()))
    assert transfer["attacks"][name] == setting.model_dump(mode="json") and set(transfer["attacks"]) == set(p.attacks)
    assert transfer["compute"] == {
        "precision": "auto",
        "channels_last": "auto",
        "compile": False,
        "cuda_graphs": "auto",
        "search": "auto",
    }
    train = CONTRACTS["train"].record(p, "mnist-linf-std", 0)
    assert set(train) == {"model", "data", "compute"} and train["data"] == {"val_size": p.data.val_size}
    assert train["model"]["optimizer"]["lr"] == p.models["mnist-linf-std"].optimizer.lr
    assert "checkpoint_every" not in train["model"] and train["model"]["seed"] == 0  # cannot change a model
    evaluate = CONTRACTS["evaluate"].record(p, "mnist-linf-mma-0p45", 0)
    assert set(evaluate) == {"attacks", "table1", "evaluate", "seed", "compute", "transfer_sources"}
    assert evaluate["transfer_sources"] == ["mnist-linf-pgd-0p3", "mnist-linf-std"]
    for contract in CONTRACTS.values():  # every declared key path exists in the schema
        for target, seed in _targets(contract, p)[:1]:
            record = contract.record(p, target, seed)
            for key in contract.reads:
                assert ("model" if key == MEMBER else key.split(".")[0]) in record, (contract.stage, key)


def test_a_key_path_the_schema_lacks_is_named():
    p = load_params(SMOKE)
    bad = Contract(stage="x", target=None, reads=("evaluate.test_limt",), code=())
    with pytest.raises(KeyError, match="the x stage's contract reads 'evaluate.test_limt'"):
        bad.record(p)


def test_output_identity_covers_exactly_the_writing_stages_record():
    """A transfer set's and per_example.pt's identity hash the record of the stage that wrote
    them: a key the stage reads changes it, a key it does not read leaves it as it was."""
    p = load_params(SMOKE)
    transfer, evaluate = CONTRACTS["transfer"], CONTRACTS["evaluate"]
    base_t, base_e = output_identity(transfer, p, "PGD", 0), output_identity(evaluate, p, "mnist-linf-std", 0)
    assert base_t["settings_sha256"] == record_hash(transfer.record(p, "PGD", 0))
    assert base_t["model"] == p.source_model("PGD") and base_t["stage"] == "transfer"
    assert base_e["settings_sha256"] == record_hash(evaluate.record(p, "mnist-linf-std", 0))

    def edited(**sections):
        return p.model_copy(update={k: getattr(p, k).model_copy(update=v) for k, v in sections.items()})

    batch = edited(evaluate={"batch_size": p.evaluate.batch_size + 1})  # read by both stages
    assert output_identity(transfer, batch, "PGD", 0) != base_t
    assert output_identity(evaluate, batch, "mnist-linf-std", 0) != base_e
    columns = edited(table1={"columns": {}})  # which models Table 1 shows: evaluate's, not transfer's
    assert output_identity(transfer, columns, "PGD", 0) == base_t
    assert output_identity(evaluate, columns, "mnist-linf-std", 0) != base_e
    dpi = edited(report={"dpi": 300})  # the report's alone
    assert output_identity(transfer, dpi, "PGD", 0) == base_t
    assert output_identity(evaluate, dpi, "mnist-linf-std", 0) == base_e


def test_mlflow_params_are_the_record_flattened_within_mlflows_limits():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from mma.tracking import _param_value, flatten

    p = load_params(ROOT / "params.yaml")
    flat = flatten(CONTRACTS["evaluate"].record(p, "mnist-linf-std", 0))
    assert flat["attacks.pgd40x50.restarts"] == 50 and flat["evaluate.test_limit"] is None
    assert flat["evaluate.threat_models.0.dataset"] == "mnist" and flat["table1.eps"] == [0.3, 0.4, 0.5]
    assert flat["compute.precision"] == "auto" and flat["seed"] == 0
    assert flat["evaluate.margins.fab_steps"] == 100 and flat["table1.sources.PGD.model"] == "mnist-linf-pgd-0p3"
    for contract in CONTRACTS.values():  # every value fits MLflow's limit without a cut
        for target, seed in _targets(contract, p):
            assert all(
                len(_param_value(v)) <= MAX_PARAM_VAL_LENGTH for v in flatten(contract.record(p, target, seed)).values()
            )
    long = _param_value(list(range(5000)))
    assert len(long) == MAX_PARAM_VAL_LENGTH and long.endswith("in the run's params artifact)")


def test_bookkeeping_file_holds_the_record_and_the_chosen_files_hashes(tmp_path, monkeypatch):
    """`mma spec transfer ROLE` writes transfer's record and the md5 of the role's model file
    (null before it is trained); `mma spec train NAME` the train record, no files."""
    import hashlib

    from typer.testing import CliRunner

    from mma.cli import app

    monkeypatch.chdir(tmp_path)
    p = load_params(SMOKE)
    result = CliRunner().invoke(app, ["spec", "transfer", "PGD", "--params", str(SMOKE)])
    assert result.exit_code == 0, result.output
    model = tmp_path / "results" / "models" / "mnist-linf-pgd-0p3" / "seed0" / "model.pt"
    written = json.loads((tmp_path / "results" / "sources" / "PGD" / "seed0.json").read_text())
    assert written == {
        "stage": "transfer",
        "target": "PGD",
        "seed": 0,
        "reads": json.loads(json.dumps(CONTRACTS["transfer"].record(p, "PGD", 0))),
        "files": {"results/models/mnist-linf-pgd-0p3/seed0/model.pt": None},
    }
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    assert CliRunner().invoke(app, ["spec", "transfer", "PGD", "--params", str(SMOKE)]).exit_code == 0
    written = json.loads((tmp_path / "results" / "sources" / "PGD" / "seed0.json").read_text())
    assert written["files"] == {"results/models/mnist-linf-pgd-0p3/seed0/model.pt": hashlib.md5(b"weights").hexdigest()}
    assert CliRunner().invoke(app, ["spec", "train", "mnist-linf-std", "--params", str(SMOKE)]).exit_code == 0
    spec = json.loads((tmp_path / "results" / "specs" / "mnist-linf-std" / "seed0.json").read_text())
    assert spec["reads"] == json.loads(json.dumps(CONTRACTS["train"].record(p, "mnist-linf-std", 0)))
    assert spec["files"] == {}
    bad = CliRunner().invoke(app, ["spec", "report", "x", "--params", str(SMOKE)])
    assert bad.exit_code == 2 and "expected one of train, transfer, evaluate" in bad.stderr
