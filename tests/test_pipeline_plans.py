"""What DVC and Snakemake plan: stages and params by model name and seed, reruns that follow
values (not a params file's name, not keys that cannot change a result), and what an evaluate
stage depends on.  Fast checks with the real tools on a scratch copy of the repository; the
full-DAG runs are in tests/test_pipeline.py (slow)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml
from test_pipeline import _env, _tool, scratch_copy, snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "presets" / "smoke.yaml"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_snakemake_reruns_nothing_for_a_copied_params_file_and_one_spec_for_one_edit(tmp_path):
    """The spec jobs (cheap) run for real; then a copy of the params file under another name
    plans nothing, and one lr edit in the copy plans only that model's spec job."""
    repo = scratch_copy(tmp_path / "repo")
    names = list(yaml.safe_load((repo / "params.yaml").read_text())["models"])
    specs = [f"results/specs/{n}/seed0.json" for n in names]
    subprocess.run([_tool("snakemake"), "--cores", "1", *specs], cwd=repo, env=_env(), check=True, capture_output=True)
    copy = tmp_path / "my-params.yaml"
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))  # same values, another name and layout
    assert snakemake_jobs(repo, *specs, "--configfile", str(copy)) == []
    for spec in doc["models"].values():  # keys that cannot change a model: nothing to rerun either
        spec.update(checkpoint_every=7, log_every=3)
    doc.update(threads=2, device="cpu")
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert snakemake_jobs(repo, *specs, "--configfile", str(copy)) == []
    doc["models"]["mnist-linf-pgd-0p3"]["optimizer"]["lr"] = 0.002
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert snakemake_jobs(repo, *specs, "--configfile", str(copy)) == ["spec:mnist-linf-pgd-0p3:0"]


def test_dvc_stages_by_model_name_and_one_edit_changes_one_spec_file(tmp_path):
    """`dvc stage list` names per-member stages by model and seed; after an lr edit the spec
    stages rerun (cheap) but only that model's file changes, so only its train stage is out of
    date; checkpoint_every changes no file."""
    repo = scratch_copy(tmp_path / "repo")
    listed = subprocess.run(
        [_tool("dvc"), "stage", "list", "--name-only"], cwd=repo, env=_env(), check=True, capture_output=True, text=True
    ).stdout.split()
    for stage in (
        "train@mnist-linf-pgd-0p3-0",
        "evaluate@cifar10-l2-mma-1p0-0",
        "spec@mnist-linf-std-0",
        "inputs@mnist-l2-mma-2p0-0",
        "transfer@PGD-0",
        "source@PGD-0",
    ):
        assert stage in listed, listed
    subprocess.run([_tool("dvc"), "repro", "--glob", "spec@*"], cwd=repo, env=_env(), check=True, capture_output=True)
    before = {p.parent.name: _md5(p) for p in (repo / "results" / "specs").glob("*/seed0.json")}
    assert set(before) == set(yaml.safe_load((repo / "params.yaml").read_text())["models"])
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    doc["models"]["mnist-linf-std"]["checkpoint_every"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    subprocess.run([_tool("dvc"), "repro", "--glob", "spec@*"], cwd=repo, env=_env(), check=True, capture_output=True)
    assert {p.parent.name: _md5(p) for p in (repo / "results" / "specs").glob("*/seed0.json")} == before
    doc["models"]["mnist-linf-pgd-0p3"]["optimizer"]["lr"] = 0.002
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    subprocess.run([_tool("dvc"), "repro", "--glob", "spec@*"], cwd=repo, env=_env(), check=True, capture_output=True)
    after = {p.parent.name: _md5(p) for p in (repo / "results" / "specs").glob("*/seed0.json")}
    assert {n for n in after if after[n] != before[n]} == {"mnist-linf-pgd-0p3"}


def test_two_seeds_plan_one_job_per_model_and_seed_in_both_tools(tmp_path):
    """seeds: [0, 1]: `dvc stage list` and `snakemake -n` list one train (spec, inputs, evaluate)
    job per (model, seed) and one transfer (source) job per (role, seed), one data and one report."""
    repo = scratch_copy(tmp_path / "repo")
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    doc["seeds"] = [0, 1]
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    members = {f"{n}-{s}" for n in doc["models"] for s in (0, 1)}
    roles = {f"{r}-{s}" for r in doc["table1"]["sources"] for s in (0, 1)}
    assert len(members) == 2 * 6 and len(roles) == 2 * 3
    expected = (
        {"data", "report"}
        | {f"{kind}@{m}" for kind in ("spec", "train", "inputs", "evaluate") for m in members}
        | {f"{kind}@{r}" for kind in ("source", "transfer") for r in roles}
    )
    listed = subprocess.run(
        [_tool("dvc"), "stage", "list", "--name-only"], cwd=repo, env=_env(), check=True, capture_output=True, text=True
    ).stdout.split()
    assert sorted(listed) == sorted(expected)
    jobs = snakemake_jobs(repo)  # nothing built yet: every job, once
    as_dvc = {j if ":" not in j else "{}@{}-{}".format(*j.split(":")) for j in jobs}
    assert len(jobs) == len(as_dvc) and as_dvc == expected
    model = "results/models/mnist-linf-std/seed1/model.pt"
    cmds = subprocess.run(
        [_tool("snakemake"), "-n", "-p", "--cores", "1", model],
        cwd=repo,
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "mma train mnist-linf-std --seed 1 --params params.yaml" in cmds


def test_evaluate_inputs_record_holds_only_its_threat_models_sets(tmp_path, monkeypatch):
    """What DVC's evaluate@NAME-S depends on (results/specs/NAME/seedS.evaluate.json): the seed-S
    sets of its own threat model's sources, by hash; another threat model's or seed's are not in it."""
    from mma.config.params import load_params
    from mma.stages.evaluate import CONTRACT

    def inputs_record(p, name, seed):
        return CONTRACT.bookkeeping_record(p, name, seed)

    monkeypatch.chdir(tmp_path)
    doc = yaml.safe_load(SMOKE.read_text())
    (tmp_path / "two-seeds.yaml").write_text(yaml.safe_dump({**doc, "seeds": [0, 1]}))
    p = load_params(tmp_path / "two-seeds.yaml")
    assert {r: s.model for r, s in p.table1.sources.items()} == {
        "MMA": "mnist-linf-mma-0p45",
        "PGD": "mnist-linf-pgd-0p3",
        "STD": "mnist-linf-std",
    }  # MMA: its own, not read
    for role in ("STD", "PGD"):
        for seed in (0, 1):
            folder = tmp_path / "results" / "transfer" / role / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "manifest.json").write_text(f"{role} {seed}")
    linf = inputs_record(p, "mnist-linf-mma-0p45", 0)
    assert set(linf["files"]) == {
        "results/transfer/STD/seed0/manifest.json",
        "results/transfer/PGD/seed0/manifest.json",
    }
    assert set(inputs_record(p, "mnist-linf-mma-0p45", 1)["files"]) == {
        "results/transfer/STD/seed1/manifest.json",
        "results/transfer/PGD/seed1/manifest.json",
    }
    assert inputs_record(p, "mnist-l2-mma-2p0", 0)["files"] == {}
    before = inputs_record(p, "mnist-l2-mma-2p0", 0)
    (tmp_path / "results" / "transfer" / "STD" / "seed1" / "manifest.json").write_text("changed")
    assert inputs_record(p, "mnist-l2-mma-2p0", 0) == before
    assert inputs_record(p, "mnist-linf-mma-0p45", 0) == linf  # another seed's set: not read by seed 0
    (tmp_path / "results" / "transfer" / "STD" / "seed0" / "manifest.json").write_text("changed")
    assert inputs_record(p, "mnist-linf-mma-0p45", 0) != linf
