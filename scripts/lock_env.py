"""`make lock`'s last step: requirements.lock (the compiled file under the existing header)
and workflow/envs/mma.yaml (the same pins, for `snakemake --use-conda`).

    python scripts/lock_env.py COMPILED
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_HEAD = """\
# Software of every rule, for `snakemake --use-conda` (the default run uses the active
# environment, e.g. `make setup`'s .venv): the same versions as requirements.lock (a test
# checks that; regenerate both with `make lock`).  The package itself is installed from the
# repository root, where Snakemake runs (torchattacks, a test-only peer, is left out: it pins
# requests~=2.25.1).
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def pins(lock_text: str) -> list[str]:
    """NAME==VERSION of every package of a lock file, in its order."""
    return re.findall(r"^([A-Za-z0-9_.\-]+==[^\s\\;]+)", lock_text, re.M)


def main(compiled: str) -> None:
    lock = ROOT / "requirements.lock"
    header = (
        "".join(line for line in lock.read_text().splitlines(keepends=True) if line.startswith("#"))
        if lock.exists()
        else ""
    )
    body = Path(compiled).read_text()
    lock.write_text(header + body)
    env = ENV_HEAD + "".join(f"      - {p}\n" for p in pins(body)) + "      - -e .\n"
    (ROOT / "workflow" / "envs" / "mma.yaml").write_text(env)


if __name__ == "__main__":
    main(*sys.argv[1:])
