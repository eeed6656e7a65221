"""The transfer, evaluate and report stages end to end on real MNIST (a few hundred
test images, a small conv net, tiny attack settings): every file is written, every
number the report prints comes from the evaluate outputs."""

import copy
import json

import pytest
import torch
from conftest import mnist_source

from mma import paths
from mma.config.evaluation import (
    AttackSetting,
    AutoAttackParams,
    BoundaryParams,
    ChecksParams,
    EvaluateParams,
    MarginParams,
    ReportParams,
    ThreatModel,
)

NAMES = [
    ("mnist-linf-std", "std", "linf"),
    ("mnist-linf-pgd-0p3", "pgd", "linf"),
    ("mnist-linf-mma-v1", "mma", "linf"),
    ("mnist-l2-pgd-1", "pgd", "l2"),
]


class Tracker:
    def __init__(self):
        self.metrics, self.artifacts = {}, []

    def log_metrics(self, m, step=None):
        self.metrics.update(m)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(str(path))

    def log_params(self, p):
        pass

    def set_tags(self, t):
        pass


def smoke_params(root):
    from mma.config.data import DataParams
    from mma.config.model import ModelSpec
    from mma.config.params import Params

    blocks = {"std": {}, "pgd": {"pgd": {"eps": 0.3}}, "mma": {"mma": {"d_max": None, "eps_max": 0.5}}}
    models = [
        ModelSpec(name=n, dataset="mnist", arch="lenet5_madry", norm=norm, method=m, **blocks[m])
        for n, m, norm in NAMES
    ]
    s = {
        "fgsm": AttackSetting(attack="fgsm", random_init=False),
        "pgd40x1": AttackSetting(steps=2),
        "pgd40x50": AttackSetting(steps=2, restarts=2),
        "pgd100x1": AttackSetting(steps=3),
        "pgd100x50": AttackSetting(steps=3, restarts=2),
    }
    tms = [
        ThreatModel(
            dataset="mnist",
            norm="linf",
            curve_eps=[0.1, 0.2, 0.3, 0.4, 0.5],
            headline_eps=0.3,
            margin_eps_max=1.0,
            unbounded_eps=1.0,
        ),
        ThreatModel(
            dataset="mnist",
            norm="l2",
            curve_eps=[1.0, 2.0, 3.0],
            headline_eps=2.0,
            margin_eps_max=10.0,
            boundary=True,
            unbounded_eps=28.0,
        ),
    ]
    return Params(
        models=models,
        data=DataParams(root=str(root), val_size=100),
        attacks=s,
        evaluate=EvaluateParams(
            threat_models=tms,
            test_limit=60,
            batch_size=60,
            boundary=BoundaryParams(limit=8, steps=20, init_attempts=10, batch_size=8),
            autoattack=AutoAttackParams(limit=12, n_iter=3, n_queries=10),
            margins=MarginParams(limit=20, an_pgd_steps=3, fab_steps=3, bisection_steps=5),
            checks=ChecksParams(unbounded_steps=3, more_steps=6, more_restarts=3),
        ),
        report=ReportParams(dpi=60),
    )


@pytest.fixture()
def world(tmp_path, monkeypatch, trained_convnet):
    from mma.data import prepare_mnist
    from mma.io import save_tensors

    prepare_mnist(tmp_path / "data", mnist_source(), verify=False)
    monkeypatch.chdir(tmp_path)
    params = smoke_params(tmp_path / "data")
    nets = {}
    for i, (name, _, _) in enumerate(NAMES):
        net = copy.deepcopy(trained_convnet)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * i * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        nets[name] = net
        save_tensors(paths.model_file(name, 0), {"state_dict": net.state_dict()})
    spec_of = dict(params.models)

    def fake_load_model(path, device="cpu", remedy=""):  # the stages load through mma.train.load_model
        from mma.stages.contract import identity

        name = path.parent.parent.name  # results/models/NAME/seed0/model.pt
        return (
            copy.deepcopy(nets[name]).to(device).eval(),
            spec_of[name],
            {"identity": identity(params, name, 0, "train")},
        )

    monkeypatch.setattr("mma.train.load_model", fake_load_model)
    return params


def test_stages_write_every_file(world):
    from mma.stages import evaluate, report, transfer

    params = world
    for role, s in params.table1.sources.items():
        m = transfer.run(params, role, 0, device="cpu", tracker=Tracker())
        assert m and all(0 <= v <= 100 for v in m.values())
        manifest = json.loads((paths.transfer_dir(role, 0) / "manifest.json").read_text())
        assert (manifest["source"], manifest["role"], manifest["seed"]) == (s.model, role, 0)
        assert len(manifest["sets"]) == len(s.attacks) * len(params.table1.eps)
    for name, _, _ in NAMES:
        t = Tracker()
        m = evaluate.run(params, name, 0, device="cpu", tracker=t)
        out = paths.eval_dir(name, 0)
        assert (out / "metrics.json").is_file() and (out / "per_example.pt").is_file()
        assert t.metrics == m and "clean_accuracy" in m
        # the DVC metrics file: a few headline numbers (percent), the same as the full metrics.json
        full, head = json.loads((out / "metrics.json").read_text()), json.loads(paths.metrics_file(name, 0).read_text())
        tm = params.evaluate.threat_model(params.model(name).dataset, params.model(name).norm)
        assert head["clean"] == pytest.approx(full["clean_accuracy"], abs=1e-3)
        assert "eps" not in head  # a param (the threat model's headline_eps), not a metric
        assert head["worst"] == pytest.approx(full["worst_case"][f"{tm.headline_eps:g}"], abs=1e-3)
        assert head["worst"] <= head["whitebox"] <= head["clean"]
        for e in params.table1.eps if name in params.table1.columns else []:
            if e != tm.headline_eps:
                assert head[f"worst@{e:g}"] <= head[f"whitebox@{e:g}"] <= head["clean"]
        assert len(head) <= 10 and all(0 <= v <= 100 for k, v in head.items() if not k.startswith("margin"))
        curve = paths.plot_file("robust_vs_eps", name, 0).read_text().splitlines()
        assert curve[0] == "eps\tcurve_attack\tworst_case" and len(curve) > 2
    t = Tracker()
    flat = report.run(params, tracker=t)
    out = paths.report_dir()
    for f in ("table1.md", "table1.csv", "figure3.png", "margins.png", "summary.json", "summary.md"):
        assert (out / f).is_file() and (out / f).stat().st_size > 100, f
    summary = json.loads((out / "summary.json").read_text())
    assert {c["status"] for c in summary["checks"]} <= {"pass", "flag"}
    assert summary["loss"] == "ce" and len(summary["autoattack"]) == len(NAMES)
    assert set(summary["margins"]) == {n for n, _, _ in NAMES}
    assert summary["figure3_panels"]["(c) CIFAR10, Linf"] == []  # "not in this grid"
    md = (out / "table1.md").read_text()
    assert "93.64" in md and "Worst case" in md and "white-box and transfer sets): **ce**" in md
    # every number traces to the evaluate outputs: Table 1's natural row = metrics.json's clean accuracy
    for name in ("mnist-linf-std", "mnist-linf-pgd-0p3", "mnist-linf-mma-v1"):
        metrics = json.loads((paths.eval_dir(name, 0) / "metrics.json").read_text())
        row = summary["table1"]["rows"][0]
        assert row["cells"][name]["ours"] == pytest.approx(metrics["clean_accuracy"])
        assert summary["models"][name]["worst_case"]["0.3"] == pytest.approx(metrics["worst_case"]["0.3"])
    assert flat["checks_total"] == len(summary["checks"])
    assert any(a.endswith("figure3.png") for a in t.artifacts)
