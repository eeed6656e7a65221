# Shared by the rules: the params file, validated at parse time with the same schema
# (and the same one-line errors) as the `mma` CLI, and the output paths of mma/paths.py.
import json
import os
import re

from mma import paths
from mma.config.params import ParamsError, load_params
from mma.stages import RECORDED

# The stages read the params FILE (`mma ... --params FILE`), so the DAG is built from that
# same file: the last --configfile, else params.yaml.  (Snakemake's own `config` merges the
# files key by key; the stages never see it.)  `--config KEY=VALUE` would change Snakemake's
# view only, so it is refused.
PARAMS = os.path.relpath((workflow.overwrite_configfiles or ["params.yaml"])[-1])
if workflow.config_settings.config:
    raise WorkflowError(
        "--config overrides are not seen by the stages; put them in a params file "
        "and pass it with --configfile FILE"
    )
try:
    P = load_params(PARAMS)
except ParamsError as e:
    raise WorkflowError(f"invalid params: {e}") from None


def params_file(wildcards, input):
    """The params file, for the command line only.  Snakemake's params rerun trigger compares
    the *values* of non-derived params; a params function that takes `input` counts as derived
    (snakemake.persistence: non_derived_params), so the file's name is not compared: a copied or
    renamed params file with the same values reruns nothing.  What each job reads from it is
    in its `settings` param (train, transfer, evaluate: in their spec, source, inputs file)."""
    return PARAMS


MODELS = P.model_names
SEEDS = P.seeds  # every model is trained once per seed: jobs have wildcards name (or role) and seed
ROLES = list(P.table1.sources)  # transfer jobs are by Table-1 role, as dvc.yaml's transfer@ROLE-SEED
# torch threads per job: params.threads, else all cores (Snakemake exports OMP_NUM_THREADS
# = the rule's threads to each job; with the default of 1 torch would run single-threaded)
try:
    THREADS = P.threads or workflow.cores
except WorkflowError:  # a cluster executor without --cores: 4 CPUs per GPU job (cpus_per_task)
    THREADS = 4
# GPU stages hold one GPU each: `snakemake --cores 8 --resources gpu=1` schedules them
GPU = 0 if P.device == "cpu" else 1
DATA = P.data.root
ENV = "../envs/mma.yaml"  # relative to the rule files (Snakemake's convention)


def reads(rule):
    """The `settings` param of `rule`: what it reads from the params, for its wildcards (the
    record of its stage's contract, mma.stages.contract; for spec, source and inputs the record
    of the stage they write it for), as dvc.yaml's `params:`.  Snakemake's params trigger
    reruns a job when its record changes."""
    contract = RECORDED[rule]

    def settings(wildcards):
        target = wildcards.get("name") or wildcards.get("role")
        seed = int(wildcards.seed) if "seed" in wildcards.keys() else None
        return json.dumps(contract.record(P, target, seed), sort_keys=True)

    return settings


# Output paths as wildcard patterns, from mma/paths.py (the CLI writes exactly these)
SPEC = str(paths.spec_file("{name}", "{seed}"))
EVAL_SPEC = str(paths.eval_spec_file("{name}", "{seed}"))
MODEL = str(paths.model_file("{name}", "{seed}"))
TRAIN_METRICS = str(paths.model_dir("{name}", "{seed}") / "metrics.json")
TRAIN_INFO = str(paths.model_dir("{name}", "{seed}") / "info.json")
METRICS = str(paths.metrics_file("{name}", "{seed}"))
PLOT = {kind: str(paths.plot_file(kind, "{name}", "{seed}")) for kind in paths.PLOTS}
SOURCE = str(paths.source_file("{role}", "{seed}"))
TRANSFER = str(paths.transfer_dir("{role}", "{seed}"))
EVAL = str(paths.eval_dir("{name}", "{seed}"))
REPORT_FILES = [
    str(paths.report_dir() / f)
    for f in ("table1.md", "table1.csv", "figure3.png", "margins.png", "summary.json", "summary.md")
]
# shown by `snakemake --report report.html` (the rest stay plain outputs)
IN_REPORT = {"table1.md": "Table 1", "table1.csv": "Table 1", "figure3.png": "Figure 3",
             "margins.png": "Margins", "summary.md": "Summary"}


def report_outputs():
    return [report(f, category=IN_REPORT[os.path.basename(f)]) if os.path.basename(f) in IN_REPORT else f
            for f in REPORT_FILES]


wildcard_constraints:
    name="|".join(re.escape(n) for n in MODELS),
    seed="|".join(str(s) for s in SEEDS),
    role="|".join(re.escape(r) for r in ROLES),


def transfer_sets(wildcards):
    """The transfer sets member (NAME, SEED) is evaluated on: the seed's sets of its threat model's sources."""
    return [str(paths.transfer_dir(P.role_of(s), wildcards.seed))
            for s in P.table1.sources_for(wildcards.name, P.models.values())]


def source_model(wildcards):
    """The model file of the seed's member of the role's source (Table 1)."""
    return str(paths.model_file(P.source_model(wildcards.role), wildcards.seed))


# Cluster resources (the SLURM profile, workflow/profiles/slurm, docs/cluster.md): memory by
# architecture, time from what the params make each job do, so a CIFAR10 WideResNet job asks
# for more than a LeNet one without hand-edited rules.  Estimates for one GPU, with headroom;
# a local run ignores them.  Override with `--set-resources train:runtime=900` (minutes).
MEM_MB = {"lenet5_madry": 4000, "wrn10_1": 6000, "wrn28_4": 16000}
PASS_S = {"lenet5_madry": 0.003, "wrn10_1": 0.01, "wrn28_4": 0.06}  # s per forward+backward of a batch
EVAL_MIN = {"lenet5_madry": 240, "wrn10_1": 120, "wrn28_4": 1440}  # transfer, evaluate (minutes)


def _passes(spec):
    """Forward+backward passes per training step: the attack's steps (and MMA's bisection) + 1."""
    if spec.method == "pgd":
        return spec.pgd.steps + 1
    if spec.method == "mma":
        return spec.mma.steps + spec.mma.bisection_steps + 2
    return 1


def _model_of(wildcards):
    """The model a job works on: its name, or (transfer, source) its role's source model."""
    return P.model(wildcards.name if "name" in wildcards.keys() else P.source_model(wildcards.role))


def mem_mb(wildcards):
    return MEM_MB[_model_of(wildcards).arch]


def train_runtime(wildcards):
    spec = P.model(wildcards.name)
    seconds = spec.train_steps * _passes(spec) * PASS_S[spec.arch] * 2  # x2: validation, checkpoints, slack
    return 10 + int(seconds // 60)


def eval_runtime(wildcards):
    return EVAL_MIN[_model_of(wildcards).arch]
