"""What a stage reads from the params, and who a file between stages is."""

from __future__ import annotations

from ..config.data import data_name
from ..config.model import NO_RESULT_KEYS


def spec_record(p, name: str, seed: int) -> dict:
    """Everything the train stage of member (``name``, ``seed``) reads from params that can
    change its result: the resolved model spec with its seed (defaults filled in,
    NO_RESULT_KEYS left out) and the data settings it depends on.  DVC tracks it as the train
    stage's dependency (results/specs/NAME/seedS.json), Snakemake as the spec job's params; a
    resume checkpoint is resumed only under the same record."""
    return {"model": p.member(name, seed).model_dump(mode="json", exclude=set(NO_RESULT_KEYS)),
            "val_size": p.data.val_size, "compute": p.compute.model_dump(mode="json")}


def record_hash(record: dict) -> str:
    """sha256 of a settings record as canonical JSON (sorted keys, no spaces)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def spec_hash(p, name: str, seed: int) -> str:
    """sha256 of ``spec_record``: what a model file says it was trained with."""
    return record_hash(spec_record(p, name, seed))


def identity(p, name: str, seed: int, stage: str) -> dict:
    """Who a file between stages is: the member it belongs to (model and seed), the hash of
    its resolved settings, the data it used and the stage that wrote it.  Readers compare it
    with the params entry they use it for (``mma.stages.files``)."""
    m = p.model(name)
    return {"model": name, "seed": seed, "spec_sha256": spec_hash(p, name, seed), "data": data_name(p.data, m.dataset),
            "stage": stage}
