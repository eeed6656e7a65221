"""The schema of params.yaml: plain, validated data, one module per part.

    model        one entry of ``models``: architecture, method (STD / PGD / MMA), optimiser
    evaluation   ``attacks`` (every named attack setting, stated once), ``table1``,
                 ``evaluate`` and ``report``

``mma.params`` assembles them into the whole file and loads it.  Nothing here imports
torch: the CLI and the Snakefile validate a params file without paying for it.
"""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Every section: unknown keys are refused, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
