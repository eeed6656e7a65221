# Entry points (README "Quick start"):
#   make setup   create .venv and install the package with its dev tools
#   make test    the whole test suite (slow tests included, as in CI)
#   make smoke   the whole DAG on tiny settings (presets/smoke.yaml), minutes on a CPU
#   make quick   MNIST Linf reduced reproduction (presets/quick.yaml), ~47-49 min on 2 cores
#   make faithfulness   the quick profile with two seeds and the clip_final and selection variants
#                (presets/faithfulness.yaml; docs/faithfulness.md), hours on a CPU
#   make paper   the paper's settings: `dvc repro` on params.yaml (meant for a GPU)
#   make gpu-wheels  (on a machine with PyPI) pydantic's wheels for the GPU machine, into gpu-wheels/
#   make gpu-check   (on the GPU machine, copied with gpu-wheels/) device tests, bench, step timings and
#                    projected GPU-hours in results/gpu_check.json; DEVICE=cpu: a short dry run
#   make gpu-paper   (on the GPU machine) one Table-1 model of params.yaml (MODEL) trained at its paper
#                    settings and evaluated on the 10,000 test images, in calls of GPU_PAPER_BUDGET_S
#                    seconds that each continue the last in STATE (docs/gpu.md); DEVICE=cpu: a dry run on
#                    presets/smoke.yaml's model in STATE=gpu-paper-dry-run
#     variables: DEVICE (cuda), MODEL (mnist-linf-mma-0p45; mnist-linf-pgd-0p3: the PGD column), SEED (the
#                params' only seed), STATE (gpu-paper), GPU_PAPER_BUDGET_S (500), PARAMS (params.yaml),
#                GPU_PAPER_ARGS (e.g. --min-restarts 10 --max-restarts 50 --eps 0.3,0.4,0.5 --parts train)
#   make cluster-deps   Debian packages of the cluster path's tests (root): SLURM, munge, PostgreSQL
#   make cluster-up / cluster-down   a one-node SLURM cluster + MLflow server on PostgreSQL, here
#   make test-cluster   only the cluster tests (tests/test_cluster.py; docs/cluster.md)
#
# smoke and quick run `dvc repro` in a scratch copy, runs/<profile>/, with the profile as its
# params.yaml: the repository's params.yaml is never overwritten, and a rerun resumes where
# the last one stopped.  Runs are recorded in this repository's MLflow store (mlflow.db).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
RUNS := runs

# The active environment's tools if `mma` is on PATH, else .venv's (the DVC stages call `mma`).
ifeq ($(shell command -v mma 2>/dev/null),)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
endif

# Offline MNIST: $MMA_DATA_SOURCE if set, else ../shared/data/mnist beside the repository if
# present; otherwise the data stage downloads it.
SHARED_MNIST := $(abspath $(CURDIR)/../shared/data/mnist)
MMA_DATA_SOURCE ?= $(if $(wildcard $(SHARED_MNIST)/*),$(SHARED_MNIST),)
export MMA_DATA_SOURCE
# Scratch runs land in this repository's store ($MLFLOW_TRACKING_URI wins).
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export MLFLOW_TRACKING_URI

.PHONY: setup lock lint test smoke quick faithfulness paper clean-runs gpu-wheels gpu-check gpu-paper gpu-pydantic cluster-deps cluster-up cluster-down test-cluster

# LOCK=1 (the default): the pinned versions of requirements.lock (hashes checked), then the
# package without resolving again; LOCK=0: the newest versions pyproject.toml allows.
LOCK ?= 1
setup:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	if [ "$(LOCK)" = 1 ]; then \
	  $(VENV)/bin/pip install --require-hashes -r requirements.lock && \
	  $(VENV)/bin/pip install --no-deps -e . ; \
	else \
	  $(VENV)/bin/pip install -e '.[pipeline,dev,cluster]' ; \
	fi
	@# torchattacks pins requests~=2.25.1, which would break dvc/mlflow: installed without its deps
	$(VENV)/bin/pip install --no-deps torchattacks==3.5.1
	@# as root: Debian's SLURM, munge and PostgreSQL for the cluster tests (they skip without them)
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory cluster-deps; \
	  else echo "setup: not root: Debian packages of the cluster tests not installed (sudo make cluster-deps)"; fi

# requirements.lock and workflow/envs/mma.yaml from the active environment's versions (see the lock's header)
lock:
	mkdir -p $(RUNS)
	pip freeze --exclude-editable | grep -v -e '^torchattacks' -e '^mma' > $(RUNS)/freeze.txt
	uv pip compile pyproject.toml --extra pipeline --extra dev --extra cluster --generate-hashes \
	  --constraint $(RUNS)/freeze.txt --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --no-header -o $(RUNS)/requirements.lock
	$(PYTHON) scripts/lock_env.py $(RUNS)/requirements.lock

# ruff: lint and format check (pyproject.toml [tool.ruff]); `ruff format .` applies the format
lint:
	ruff check .
	ruff format --check .

test: lint
	@# pytest's exit code 5 means "no tests collected": a broken checkout, never a pass
	pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

smoke quick faithfulness:
	@mkdir -p $(RUNS)/$@
	@# the repository's files (tracked and not ignored) into the scratch copy; results/ and
	@# the DVC cache of an earlier run stay, so DVC skips what is already done
	git ls-files -z --cached --others --exclude-standard \
	  | while IFS= read -r -d '' f; do [ -e "$$f" ] && printf '%s\0' "$$f"; done \
	  | xargs -0 cp --parents -t $(RUNS)/$@
	cp presets/$@.yaml $(RUNS)/$@/params.yaml
	@# a folder inside this git repository: DVC runs it without git of its own
	cd $(RUNS)/$@ && dvc config --local core.no_scm true && dvc repro
	@echo "report: $(RUNS)/$@/results/report/ (table1.md, table1.csv, figure3.png, summary.json)"

paper:
	dvc repro

clean-runs:
	rm -rf $(RUNS)

# The GPU machine has torch, numpy, pyyaml, typer, rich, scipy and pytest but no network and no
# pydantic: gpu-check installs it from this folder (Python 3.12, manylinux x86_64 wheels, ~2 MB)
# when the import fails, and runs the core from this checkout (nothing else is installed).
GPU_WHEELS ?= gpu-wheels
GPU_PYTHON_VERSION ?= 3.12
DEVICE ?= cuda
GPU_CHECK_BUDGET_S ?= 450
GPU_CHECK_ARGS ?=  # e.g. --parts tests,steps --combos fp32,graphs+fp32 --steps 200

gpu-wheels:
	$(PYTHON) -m pip download --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
	  --platform manylinux2014_x86_64 --implementation cp -d $(GPU_WHEELS) pydantic
	@du -sh $(GPU_WHEELS)

gpu-check: gpu-pydantic
	PYTHONPATH=$(CURDIR) $(PYTHON) scripts/gpu_check.py --device $(DEVICE) \
	  --budget-s $(GPU_CHECK_BUDGET_S) $(GPU_CHECK_ARGS) $(if $(filter cpu,$(DEVICE)),--dry-run,) --out results/gpu_check$(if $(filter cpu,$(DEVICE)),_dry_run,).json

# DEVICE=cpu: the dry run (the smoke preset's model, in its own STATE: a state of other settings is refused)
DRY := $(filter cpu,$(DEVICE))
MODEL ?= mnist-linf-mma-0p45
SEED ?=
STATE ?= $(if $(DRY),gpu-paper-dry-run,gpu-paper)
PARAMS ?= $(if $(DRY),presets/smoke.yaml,params.yaml)
GPU_PAPER_BUDGET_S ?= 500
GPU_PAPER_ARGS ?=
gpu-paper: gpu-pydantic
	PYTHONPATH=$(CURDIR) $(PYTHON) scripts/gpu_paper.py --device $(DEVICE) --model $(MODEL) $(if $(SEED),--seed $(SEED),) \
	  --params $(PARAMS) --state $(STATE) --budget-s $(GPU_PAPER_BUDGET_S) $(GPU_PAPER_ARGS)

# pydantic (the params schema) from gpu-wheels/ where the machine lacks it
gpu-pydantic:
	@$(PYTHON) -c "import pydantic" 2>/dev/null || \
	  $(PYTHON) -m pip install --no-index --find-links $(GPU_WHEELS) pydantic
# The cluster path's engines (docs/cluster.md), from Debian's packages; as root.  Skips apt
# when they are all installed already.  The daemons are started by tests/cluster/*.sh, not here
# (Debian's policy keeps them from starting on install).
CLUSTER_DEBS := slurm-wlm slurmd slurmctld slurm-client munge postgresql
cluster-deps:
	@if dpkg -s $(CLUSTER_DEBS) >/dev/null 2>&1; then echo "cluster-deps: installed"; else \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(CLUSTER_DEBS); fi

cluster-up:
	bash tests/cluster/slurm.sh start
	bash tests/cluster/tracking.sh start

cluster-down:
	bash tests/cluster/tracking.sh stop
	bash tests/cluster/slurm.sh stop

test-cluster:
	timeout -k 30 2400 pytest -m cluster tests/test_cluster.py
