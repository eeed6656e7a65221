"""`make gpu-paper`: one Table-1 model (MNIST, Linf) trained at its paper settings and evaluated on the
10,000 MNIST test images, in short calls on one GPU, each continuing where the last one stopped.

    python scripts/gpu_paper.py --model mnist-linf-mma-0p45 --state gpu-paper --budget-s 500   # one call
    python scripts/gpu_paper.py --device cpu --params presets/smoke.yaml --state STATE          # the dry run

One call, within ``--budget-s`` seconds of wall time (docs/gpu.md):

1. ``train``: the pipeline's train stage (``mma.stages.train``: the training loop, its resume checkpoint,
   the model file with its identity) run inside STATE, with a step-time clock as its tracker instead of
   MLflow and the graph path on CUDA (``GRAPH_PATH``).  When the budget is spent a timer sends this
   process SIGTERM: the loop checkpoints the step in progress and stops (``mma.interrupt``); the next
   call resumes from that checkpoint.
2. ``evaluate``, once the model is trained, in units saved one by one: clean accuracy; white-box PGD
   (the params' setting for Table 1's PGD-100×1) at each ε of ``--eps``, one restart after another on
   the images still robust (at least ``--min-restarts``, then more while the budget allows, up to
   ``--max-restarts``); the AN-PGD margins.  The evaluate stage's own functions do the work
   (``mma.evaluation.whitebox.survival``, ``mma.evaluation.margins``) with its seeds: restart 1 at ε is
   the evaluate stage's PGD-100×1 record at ε.  A unit starts only if its last measured time fits in
   what is left of the budget; the first unit of a call always starts.
3. STATE/results/gpu_paper/NAME/seedS.json: these numbers beside the paper's for the model's Table-1
   column (and the final paper's anchors of an MMA model), the step times and the wall times of every
   call; printed too.

STATE holds what the train stage writes under results/: copying STATE/results/models and
STATE/results/plots over a checkout's results/ brings the model into its DAG (`mma evaluate` accepts it
under the same params).  Imports the core and pydantic only: no MLflow, DVC, Snakemake, foolbox,
AutoAttack or torchattacks.  Exit status: 0 when the call ends (the JSON's ``status`` says whether
there is more to do), 2 for bad input (one line), 1 for a diverged training, 143 when an outside
SIGTERM stopped it (its state saved).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

# The graph path on CUDA, where the params file leaves these compute keys unset (`compute: {}`): the model
# keeps the identity `mma train` gives it under the same params, and values written in the file win.
GRAPH_PATH = {
    "cuda_graphs": True  # compute.cuda_graphs: CUDA graphs (mma/compute.py says what they capture)
}
EPS = (0.3, 0.4)  # the ε of Table 1's white-box PGD-100 rows reproduced by default (--eps: others, e.g. 0.5)
PGD_SETTING = "pgd100x1"  # the paper's attack whose setting in `attacks:` the restarts use (steps, step size, loss)
MIN_RESTARTS, MAX_RESTARTS = 10, 50  # restarts per ε: at least, and at most (the paper's ×50 rows)


class InputError(Exception):
    """Bad input: one line, exit 2."""


# --------------------------------------------------------------------------- one call
@dataclass
class Call:
    """One invocation: its settings, its member of the grid and its clock."""

    args: argparse.Namespace
    params: object  # mma.config.params.Params, data.root made absolute
    name: str
    seed: int
    state: Path  # absolute; the working folder while the call runs
    t0: float = field(default_factory=time.monotonic)
    budget_spent: bool = False  # the budget timer fired (else a SIGTERM came from outside)

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def stop(self) -> None:
        """The budget timer: SIGTERM to this process (the training loop checkpoints and stops)."""
        self.budget_spent = True
        os.kill(os.getpid(), signal.SIGTERM)

    @property
    def spec(self):
        return self.params.member(self.name, self.seed)

    def switches(self):
        """``compute.resolve`` of the params' compute section, GRAPH_PATH filling its unset keys on CUDA."""
        from mma.compute import resolve
        from mma.config.compute import ComputeParams

        written = self.params.compute.model_dump(exclude_unset=True)
        filled = {**(GRAPH_PATH if self.args.device.startswith("cuda") else {}), **written}
        return resolve(ComputeParams(**filled), self.args.device)

    def json_path(self) -> Path:
        return self.state / "results" / "gpu_paper" / self.name / f"seed{self.seed}.json"

    def eval_path(self) -> Path:
        return self.state / "results" / "gpu_paper" / self.name / f"seed{self.seed}.eval.pt"


def open_call(a: argparse.Namespace) -> Call:
    """The call's settings, checked (InputError / ParamsError on bad input); nothing written yet."""
    from mma.config.params import load_params

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"--device {a.device} but torch {torch.__version__} sees no CUDA device; use DEVICE=cpu for a dry run"
        )
    if not 1 <= a.min_restarts <= a.max_restarts:
        raise InputError(f"restarts: need 1 <= --min-restarts ({a.min_restarts}) <= --max-restarts ({a.max_restarts})")
    params = load_params(a.params)
    spec = params.model(a.model)
    if (spec.dataset, spec.norm) != ("mnist", "linf"):
        raise InputError(
            f"model {a.model} is {spec.dataset} {spec.norm}: gpu-paper reproduces Table 1 (MNIST, "
            "Linf); pick one of its models (table1.columns)"
        )
    seed = params.pick_seed(a.seed)
    paper_attack(params)  # present, or refused now
    root = Path(params.data.root).resolve()  # the checkout's data, wherever STATE is
    # at least ~20 timed windows: how often the loop reads its metrics back (log_every) changes no model
    # (config.model.NO_RESULT_KEYS: not part of its identity); the paper's 100k steps keep their 100
    timed = spec.model_copy(update={"log_every": min(spec.log_every, max(1, spec.train_steps // 20))})
    params = params.model_copy(
        update={"data": params.data.model_copy(update={"root": str(root)}), "models": {**params.models, a.model: timed}}
    )
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    return Call(a, params, a.model, seed, a.state.resolve())


def paper_attack(params):
    """(name, setting) of ``attacks:``' stand-in for the paper's PGD-100×1 (its name, or its ``as_paper``)."""
    for key, setting in params.attacks.items():
        if (setting.as_paper or key) == PGD_SETTING and setting.attack == "pgd":
            return key, setting
    from mma.config.params import ParamsError

    raise ParamsError(
        f"attacks: no PGD setting stands for the paper's {PGD_SETTING} (name one {PGD_SETTING}, or "
        f"give one `as_paper: {PGD_SETTING}`)"
    )


# --------------------------------------------------------------------------- 1. train
class StepClock:
    """The train stage's tracker here: the time of each logged training point (the loop reads its metrics
    back every ``log_every`` steps, a synchronising read), for the step times.  Points at or before the
    resumed step are the journal's, sent again on resume: not timed."""

    def __init__(self, resumed_at: int):
        self.resumed_at = resumed_at
        self.points: list[tuple[int, float]] = []

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if step is not None and step > self.resumed_at and "loss" in metrics:
            self.points.append((step, time.perf_counter()))

    def flush(self, final: bool = False) -> None:
        pass

    def log_artifact(self, path, artifact_path=None) -> None:
        pass

    def window_ms(self) -> list[float]:
        """Milliseconds per step in each window between two points (validations and checkpoints
        included where they fall; the median leaves them out).  The first window of a call, which
        holds warm-up and graph capture, has no point before it and is not among them."""
        return [1000 * (t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(self.points, self.points[1:])]


def model_trained(call: Call) -> bool:
    """True when STATE holds the model file of exactly these settings (the train stage's last write)."""
    from mma import paths
    from mma.io import load_tensors
    from mma.stages.contract import identity

    path = call.state / paths.model_file(call.name, call.seed)
    if not path.exists():
        return False
    record = load_tensors(path, remedy="move it away to train the model anew")
    return record.get("identity") == identity(call.params, call.name, call.seed, "train")


def refuse_other_settings(call: Call) -> None:
    """InputError if STATE holds a checkpoint or a model of other settings of this member: hours of GPU
    time are not discarded (as `mma train` would) because a params file changed."""
    from mma import paths
    from mma.stages.train import CONTRACT as TRAIN

    spec_file = call.state / paths.resume_file(call.name, call.seed).parent / "spec.json"
    try:
        same = json.loads(spec_file.read_text()) == json.loads(
            json.dumps(TRAIN.record(call.params, call.name, call.seed))
        )
    except (OSError, ValueError):  # absent (no checkpoint: fine) or unreadable (not ours to delete)
        same = not spec_file.exists()
    if not same:
        raise InputError(
            f"{spec_file.parent}: a checkpoint of {call.name} made with other settings than "
            f"{call.args.params}'s; use another --state, or delete that folder to train anew"
        )
    model = call.state / paths.model_file(call.name, call.seed)
    if model.exists() and not model_trained(call):
        raise InputError(
            f"{model}: trained with other settings than {call.args.params}'s; use another --state, "
            "or move it away to train anew"
        )


def train(call: Call) -> dict:
    """Train in STATE until the model is done or the budget is spent; this call's training record."""
    from mma import interrupt, paths
    from mma.stages import train as stage
    from mma.train.loop import load_resume

    spec = call.spec
    if model_trained(call):
        stage.finish(call.name, call.seed)  # a call killed after the model was written left its checkpoint
        return {"steps": 0}
    restart = f"delete {call.state / paths.resume_file(call.name, call.seed).parent} to train from step 0"
    resumed = stage.prepare(call.params, call.name, call.seed)
    at = load_resume(paths.resume_file(call.name, call.seed), restart)["result"]["step"] if resumed else 0
    print(
        f"gpu-paper: training {call.name} from step {at} of {spec.train_steps} ({call.left():.0f} s left)",
        file=sys.stderr,
    )
    clock, timer = StepClock(at), threading.Timer(max(0.0, call.left()), call.stop)
    t0 = time.monotonic()
    timer.start()
    try:
        stage.run(call.params, call.name, call.seed, device=call.args.device, tracker=clock, switches=call.switches())
        stage.finish(call.name, call.seed)
        to = spec.train_steps
    except interrupt.Terminated:
        to = clock.points[-1][0] if clock.points else at  # the loop logs the step it checkpoints
    finally:
        timer.cancel()
    windows = clock.window_ms()
    return {
        "from_step": at,
        "to_step": to,
        "steps": to - at,
        "wall_s": round(time.monotonic() - t0, 3),
        "step_ms_median": statistics.median(windows) if windows else None,
        "step_ms_windows": windows,
        "compute": call.switches().record(),
    }


# --------------------------------------------------------------------------- 2. evaluate
@dataclass(frozen=True)
class Unit:
    """One piece of the evaluation, saved when done: "clean", "pgd" (restart ``restart`` at ``eps``), "margins"."""

    kind: str
    eps: float | None = None
    restart: int | None = None

    @property
    def clock(self) -> str:
        """Which earlier unit's time predicts this one's: the last of its kind (PGD: at its ε)."""
        return f"pgd@{self.eps:g}" if self.kind == "pgd" else self.kind

    def label(self) -> str:
        if self.kind == "pgd":
            return f"PGD ε={self.eps:g} restart {self.restart}"
        return {"clean": "clean accuracy", "margins": "AN-PGD margins"}[self.kind]


def plan(eps: tuple[float, ...], min_restarts: int, max_restarts: int) -> list[Unit]:
    """The units in order: clean, the first ``min_restarts`` restarts at every ε (ε by ε per restart,
    so a cut leaves them even), the margins, then the extra restarts."""

    def pgd(restarts):
        return [Unit("pgd", e, r) for r in restarts for e in eps]

    return [
        Unit("clean"),
        *pgd(range(1, min_restarts + 1)),
        Unit("margins"),
        *pgd(range(min_restarts + 1, max_restarts + 1)),
    ]


class EvalState:
    """What the evaluation has computed so far for one model file and one set of test images (``key``:
    the file's sha256 and ``evaluate.test_limit``): a tensor file in STATE rewritten after every unit;
    one of another key is set aside.  ``survived[ε]``: per test image, the restarts it withstood before
    one broke it (-1: misclassified, not attacked), as the evaluate stage's records count them."""

    def __init__(self, path: Path, key: dict):
        from mma.io import load_tensors

        self.path = path
        self.data: dict = {
            "key": key,
            "clean_pred": None,
            "y": None,
            "survived": {},
            "restarts": {},
            "anpgd": None,
            "margins": None,
            "seconds": {},
        }
        if path.exists():
            saved = load_tensors(path, remedy="delete it to evaluate from the start")
            if saved.get("key") == key:
                self.data = saved

    def save(self) -> None:
        from mma.io import save_tensors

        save_tensors(self.path, self.data)

    def done(self, u: Unit) -> bool:
        d = self.data
        if u.kind == "pgd":
            return d["restarts"].get(f"{u.eps:g}", 0) >= u.restart
        return d["clean_pred" if u.kind == "clean" else "margins"] is not None

    def status(self, units: list[Unit]) -> str:
        """evaluating (the minimum not done yet) | done (final at ≥ --min-restarts; more restarts come
        while calls go on) | complete (--max-restarts done)."""
        missing = [u for u in units if not self.done(u)]
        extra = units[units.index(Unit("margins")) + 1 :]
        return "complete" if not missing else "done" if all(u in extra for u in missing) else "evaluating"

    def estimate_s(self, u: Unit, setting, margin_params) -> float:
        """The unit's expected seconds: the last one of its kind (margins: a restart's, scaled by steps)."""
        s = self.data["seconds"]
        restart = max((v for k, v in s.items() if k.startswith("pgd@")), default=0.0)
        if u.kind == "margins" and "margins" not in s:
            return restart * (margin_params.an_pgd_steps + margin_params.bisection_steps) / setting.steps
        return s.get(u.clock, restart if u.kind == "pgd" else 0.0)


def eval_state(call: Call) -> EvalState:
    """The evaluation state of STATE's model file (trained: present)."""
    from mma import paths

    sha = hashlib.sha256(paths.model_file(call.name, call.seed).read_bytes()).hexdigest()
    return EvalState(call.eval_path(), {"model_sha256": sha, "test_limit": call.params.evaluate.test_limit})


def evaluate(call: Call, started: bool) -> dict:
    """Run the units not done yet while the budget allows (``started``: this call did work already, so
    the first unit need not start whatever the budget); the evaluation's record."""
    from mma import compute, interrupt
    from mma.config.data import data_name
    from mma.data import load_split, to_float
    from mma.evaluation.finite import finite_logits, retrain_remedy
    from mma.stages.files import load_checked_model

    p, spec, ev = call.params, call.spec, call.params.evaluate
    tm = ev.threat_model(spec.dataset, spec.norm)
    model, _, _ = load_checked_model(p, call.name, call.seed, call.args.device)
    switches = call.switches()
    net = finite_logits(compute.prepare(model, switches), call.name, retrain_remedy(call.name, call.seed))
    x_u8, y = load_split(
        data_name(p.data, spec.dataset), p.data.root, "test", val_size=p.data.val_size, limit=ev.test_limit
    )
    x, y = to_float(x_u8, call.args.device), y.to(call.args.device)
    state = eval_state(call)
    _, setting = paper_attack(p)
    work = Work(call, net, x, y, tm, setting)
    with compute.attacks(switches):  # as the evaluate stage: gradient steps in its precision, judging in fp32
        for unit in plan(call.args.eps, call.args.min_restarts, call.args.max_restarts):
            if state.done(unit):
                continue
            if started and (interrupt.requested() or call.left() < state.estimate_s(unit, setting, ev.margins)):
                break
            t0 = time.monotonic()
            work.run(unit, state.data)
            state.data["seconds"][unit.clock] = time.monotonic() - t0
            state.save()
            started = True
            print(
                f"gpu-paper: {unit.label()} done in {time.monotonic() - t0:.1f} s ({call.left():.0f} s left)",
                file=sys.stderr,
            )
    net.check()
    return summarize(call, state, setting, tm)


@dataclass
class Work:
    """The evaluate stage's functions on one model and the test images."""

    call: Call
    net: object
    x: torch.Tensor
    y: torch.Tensor
    tm: object
    setting: object

    def run(self, u: Unit, d: dict) -> None:
        getattr(self, u.kind)(u, d)

    def clean(self, u: Unit, d: dict) -> None:
        from mma.evaluation.whitebox import predict

        d["clean_pred"], d["y"] = predict(self.net, self.x, self.call.params.evaluate.batch_size).cpu(), self.y.cpu()
        correct = d["clean_pred"] == d["y"]
        for e in self.call.args.eps:
            d["survived"][f"{e:g}"] = torch.where(correct, 0, -1).to(torch.int16)

    def pgd(self, u: Unit, d: dict) -> None:
        """Restart ``u.restart`` at ``u.eps`` on the images that withstood every earlier one.  Restart 1
        has the evaluate stage's seed for this setting at ε; restart r > 1 a seed derived from it."""
        from mma.evaluation.whitebox import seed_for, survival, whitebox_seed

        p, key = self.call.params, f"{u.eps:g}"
        base = whitebox_seed(p.seed, self.call.name, self.setting, p.evaluate.loss, u.eps)
        alive = d["survived"][key] == u.restart - 1
        s = survival(
            self.net,
            self.x,
            self.y,
            u.eps,
            self.setting,
            norm=self.tm.norm,
            loss=p.evaluate.loss,
            seed=base if u.restart == 1 else seed_for(base, "restart", u.restart),
            active=alive.to(self.x.device),
            clean_pred=d["clean_pred"],
            batch_size=p.evaluate.batch_size,
            show_progress=False,
        )
        d["survived"][key] = torch.where(alive & (s == 1), u.restart, d["survived"][key]).to(torch.int16)
        d["restarts"][key] = u.restart

    def margins(self, u: Unit, d: dict) -> None:
        """AN-PGD from the first ε that broke an image at restart 1 (the evaluate stage starts it at its
        PGD ε-sweep's; here the sweep is ``--eps``), on the first ``margins.limit`` correct images."""
        from mma.evaluation.margins import anpgd_margins, combine, sweep_bounds
        from mma.evaluation.whitebox import seed_for

        p, ev, tm = self.call.params, self.call.params.evaluate, self.tm
        n = len(self.y)
        m = n if ev.margins.limit is None else min(n, ev.margins.limit)
        upper, lower = sweep_bounds({float(k): s >= 1 for k, s in d["survived"].items()})
        active = (d["clean_pred"] == self.y.cpu()) & (torch.arange(n) < m)
        eps_init = torch.where(torch.isfinite(upper), upper, torch.full_like(upper, max(tm.curve_eps)))
        lengths = anpgd_margins(
            self.net,
            self.x,
            self.y,
            active.to(self.x.device),
            eps_init,
            norm=tm.norm,
            eps_max=tm.margin_eps_max,
            params=ev.margins,
            batch_size=ev.batch_size,
            seed=seed_for(p.seed, self.call.name, "anpgd"),
        )
        _, summary = combine(
            active, {"anpgd": lengths}, upper, lower, eps_max=tm.margin_eps_max, rtol=ev.margins.disagree_rtol
        )
        d["anpgd"] = lengths
        d["margins"] = {**summary, "images": float(m), "anpgd/mean_all": float(lengths[:m].sum()) / m}


def summarize(call: Call, state: EvalState, setting, tm) -> dict:
    """The evaluation's numbers so far (accuracies in %, as the evaluate stage's records)."""
    from mma.evaluation.records import attack_record, record_key
    from mma.evaluation.results import Results

    d, p = state.data, call.params
    out: dict = {
        "status": state.status(plan(call.args.eps, call.args.min_restarts, call.args.max_restarts)),
        "attack": {
            "setting": paper_attack(p)[0],
            **setting.model_dump(mode="json"),
            "loss": setting.loss or p.evaluate.loss,
        },
        "margin_eps_max": tm.margin_eps_max,
        "unit_seconds": d["seconds"],
    }
    if d["clean_pred"] is None:
        return out
    res = Results(d["y"], d["clean_pred"] == d["y"])
    out["images"] = res.n
    out["clean_accuracy"] = res.clean_accuracy()
    out["pgd"] = {}
    for key, survived in d["survived"].items():
        r = d["restarts"].get(key, 0)
        if not r:
            continue
        records = [
            attack_record("whitebox", setting, float(key), loss=p.evaluate.loss, n=res.n, seed=p.seed, restarts=k)
            for k in range(1, r + 1)
        ]
        for rec in records:
            res.add(rec, torch.clamp(survived, max=rec.restarts))
        out["pgd"][key] = {
            "restarts": r,
            "accuracy": res.accuracy(records[-1]),
            "record": record_key(records[-1]),
            "attack": setting.model_copy(update={"restarts": r}).label(),
            "accuracy_x1": res.accuracy(records[0]),
            "attack_x1": setting.label(),
            "record_x1": record_key(records[0]),
            "accuracy_by_restarts": [res.accuracy(rec) for rec in records],
        }
    if d["margins"] is not None:
        out["margins"] = d["margins"]
    return out


# --------------------------------------------------------------------------- 3. the JSON
def paper_values(call: Call) -> dict:
    """The paper's numbers for the model: its Table-1 column (``table1.columns``' role; arXiv v1's
    models) and, for an MMA model with a hinge, the final paper's anchors of that hinge."""
    from mma.report.reference import TABLE1_SOURCE, anchors, paper_table1

    role, spec = call.params.table1.columns.get(call.name), call.spec
    out: dict = {"table1": TABLE1_SOURCE, "column": role}
    if role:
        out["clean_accuracy"] = paper_table1("Natural", None, None, None, "", role)
        out["pgd"] = {
            f"{e:g}": {
                "x1": paper_table1("PGD", e, 100, 1, role, role),
                "x50": paper_table1("PGD", e, 100, 50, role, role),
            }
            for e in call.args.eps
        }
    if spec.method == "mma" and spec.mma.d_max is not None:
        model = f"MMA-{spec.mma.d_max:g}"
        out["final_paper_anchors"] = [
            a
            for a in anchors()
            if (a["dataset"], a["norm"], a["model"]) == ("MNIST", "Linf", model) and a["eps"] in (0.0, *call.args.eps)
        ]
    return out


def comparison(ours: dict | None, paper: dict) -> list[dict]:
    """Ours beside the paper's, row by row (% accuracy; None where the paper has no number)."""
    if not ours or "clean_accuracy" not in ours:
        return []
    rows = [{"what": "clean accuracy", "ours": ours["clean_accuracy"], "paper": paper.get("clean_accuracy")}]
    for key, r in ours.get("pgd", {}).items():
        theirs = paper.get("pgd", {}).get(key, {})
        rows += [
            {
                "what": f"white-box PGD at ε {key}, 1 restart",
                "ours_attack": r["attack_x1"],
                "ours": r["accuracy_x1"],
                "paper_attack": "PGD-100×1",
                "paper": theirs.get("x1"),
            },
            {
                "what": f"white-box PGD at ε {key}, {r['restarts']} restarts",
                "ours_attack": r["attack"],
                "ours": r["accuracy"],
                "paper_attack": "PGD-100×50",
                "paper": theirs.get("x50"),
            },
        ]
    return rows


def history(call: Call, ident: dict) -> list[dict]:
    """The earlier calls' records for this model and these settings (others: a fresh history)."""
    path = call.json_path()
    if not path.exists():
        return []
    from mma.io import read_json

    old = read_json(path, remedy="delete it (the training and evaluation state stay) and rerun")
    return old.get("calls", []) if old.get("identity") == ident else []


def report(call: Call, calls: list[dict], this: dict, trained: bool, evaluation: dict | None) -> dict:
    """The JSON: ours beside the paper's, step times and wall times (this call appended to ``calls``)."""
    from mma.stages.contract import identity
    from mma.tracking import git_commit

    spec, paper = call.spec, paper_values(call)
    this["wall_s"] = round(time.monotonic() - call.t0, 3)
    calls = [*calls, this]
    runs = [c["training"] for c in calls if c["training"]["steps"]]  # the calls that trained
    windows = [w for t in runs for w in t["step_ms_windows"]]
    step = spec.train_steps if trained else max([t["to_step"] for t in runs], default=0)
    pace = this["training"]["steps"]  # steps per call, as this one went
    if trained:
        state = evaluation["status"] if evaluation else "evaluating"
    else:
        state = "training"
    return {
        "model": call.name,
        "seed": call.seed,
        "identity": identity(call.params, call.name, call.seed, "train"),
        "params_file": str(call.args.params),
        "state": str(call.state),
        "status": state,
        "device": call.args.device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(torch.device(call.args.device))
        if call.args.device.startswith("cuda")
        else None,
        "git_commit": git_commit(ROOT),
        "budget_s": call.args.budget_s,
        "wall_s": {
            "this_call": this["wall_s"],
            "all_calls": round(sum(c["wall_s"] for c in calls), 3),
            "calls": len(calls),
        },
        "training": {
            "train_steps": spec.train_steps,
            "steps_done": step,
            "finished": trained,
            "step_ms_median": statistics.median(windows) if windows else None,
            "step_ms_median_by_call": [t["step_ms_median"] for t in runs],
            "wall_ms_per_step_by_call": [round(1000 * t["wall_s"] / t["steps"], 3) for t in runs],
            "calls_left_at_this_pace": 0 if trained else -(-(spec.train_steps - step) // pace) if pace else None,
            "compute": runs[-1]["compute"] if runs else None,
            "model_file": f"results/models/{call.name}/seed{call.seed}/model.pt",
        },
        "evaluation": evaluation,
        "paper": paper,
        "comparison": comparison(evaluation, paper),
        "calls": calls,
    }


# --------------------------------------------------------------------------- main
def parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist-linf-mma-0p45", help="a model of the params file (Table 1's)")
    ap.add_argument("--seed", type=int, default=None, help="its training seed (default: the params' only seed)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--state", type=Path, default=Path("gpu-paper"), help="the folder each call continues")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=500.0, help="wall seconds of this call (default 500)")
    ap.add_argument(
        "--eps", type=lambda s: tuple(float(e) for e in s.split(",")), default=EPS, help="white-box ε (default 0.3,0.4)"
    )
    ap.add_argument("--min-restarts", type=int, default=MIN_RESTARTS)
    ap.add_argument("--max-restarts", type=int, default=MAX_RESTARTS)
    ap.add_argument("--parts", default="train,evaluate", help="train, evaluate or both (default)")
    return ap.parse_args(argv)


def work(call: Call) -> dict:
    """Data, then train and evaluate inside STATE; the JSON written and returned."""
    from mma import interrupt
    from mma.io import write_json
    from mma.stages.data import run as prepare_data
    from mma.stages.files import stage_lock

    refuse_other_settings(call)
    data = call.params.data.model_copy(update={"datasets": [call.spec.dataset]})  # only the model's
    prepare_data(call.params.model_copy(update={"data": data}))
    parts = set(call.args.parts.split(","))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    call.state.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(call.state), stage_lock("gpu-paper", call.name, call.seed):
        from mma.stages.contract import identity

        calls = history(call, identity(call.params, call.name, call.seed, "train"))
        training = train(call) if "train" in parts else {"steps": 0}
        trained = model_trained(call)
        evaluation = evaluate(call, started=training["steps"] > 0) if trained and "evaluate" in parts else None
        this = {
            "started": started,
            "budget_s": call.args.budget_s,
            "training": training,
            "stopped_by": "budget" if call.budget_spent else "SIGTERM" if interrupt.requested() else None,
        }
        out = report(call, calls, this, trained, evaluation)
        write_json(call.json_path(), out)
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    from mma import interrupt

    with errors() as failed:
        call = open_call(a)
        out = None
        with interrupt.on_sigterm():
            try:
                # SIGTERM (the budget's or another's) only sets a flag, checked at safe points
                with interrupt.deferred():
                    out = work(call)
            except interrupt.Terminated:  # raised by the training loop after its checkpoint, or on the way out
                pass
            stopped = interrupt.requested() and not call.budget_spent  # by someone else: say so in the exit status
        if out is None:
            out = json.loads(call.json_path().read_text()) if call.json_path().exists() else {}
        shown = {k: v for k, v in out.items() if k != "calls"}
        print(json.dumps(shown, indent=2, default=str))
        print(f"gpu-paper: {out.get('status')}; {call.json_path()}", file=sys.stderr)
        return interrupt.EXIT_CODE if stopped else 0
    return failed[0]


@contextlib.contextmanager
def errors():
    """Bad input, data or files: one line and exit 2 (yields a list that receives the code); a diverged
    training: one line and exit 1; anything else is a bug and keeps its traceback."""
    from mma.config.params import ParamsError
    from mma.data import SOURCE_HINT, DataError
    from mma.io import BadFileError
    from mma.stages.files import BusyError
    from mma.train import TrainingDiverged

    code: list[int] = []
    try:
        yield code
    except (InputError, ParamsError, BadFileError, BusyError, DataError) as e:
        hint = "set $MMA_DATA_SOURCE to a local folder holding the MNIST files"
        print(f"gpu-paper: {' '.join(str(e).replace(SOURCE_HINT, hint).split())}", file=sys.stderr)
        code.append(2)
    except TrainingDiverged as e:
        print(f"gpu-paper: {' '.join(str(e).split())}", file=sys.stderr)
        code.append(1)
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(
            f"gpu-paper: {where}{e.strerror or type(e).__name__}; fix the file or folder, then rerun", file=sys.stderr
        )
        code.append(2)


if __name__ == "__main__":
    sys.exit(main())
