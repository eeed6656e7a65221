"""The transfer stage: adversarial test sets made on one member (seed) of a Table-1 role's
source model (``table1.sources.ROLE.model``).

    results/transfer/ROLE/seedS/ATTACK_epsE.pt   one set per Table-1 row made on the source
                                                  (``table1.rows_made_on``): zlib-compressed
                                                  8-bit images, weights-only loadable
    results/transfer/ROLE/seedS/manifest.json    each file's record (``mma.evaluation.records``),
                                                  the source's identity and the test images' hash

Folders are by role (dvc.yaml names the stages transfer@ROLE-SEED and cannot look the
role's model up); the records inside name the source model.  A target of seed S is
evaluated on the sets of its sources' seed-S members.

Restarts are chosen on the source (the attacker has only the source model).  Sets whose
settings differ only in restarts are made in one run (``transfer.build_sets``), seeded by
the setting without its restarts: the ×1 set is the ×R set's first restart.  The folder
is written beside and swapped in whole (``files.swapped_in``): a killed run leaves the
previous sets and manifest as they were.  ``load_sets`` is the reading side (evaluate):
every set and the manifest carry the source's identity and the sha256 of this stage's record
(``CONTRACT``), so a set made under other attack settings is refused, not evaluated.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from .. import paths
from ..config.params import NAME_PATTERN
from .contract import MODEL_RUNTIME, Bookkeeping, Contract, output_identity

CONTRACT = Contract(
    stage="transfer",
    target="role",
    # table1.columns aside: which models are evaluated on the sets does not change them
    reads=(
        "attacks",
        "table1.eps",
        "table1.sources",
        "evaluate.loss",
        "evaluate.test_limit",
        "evaluate.batch_size",
        "seed",
        "compute",
    ),
    code=("mma/stages/transfer.py", "mma/evaluation", "mma/config/evaluation.py", *MODEL_RUNTIME),
    inputs=lambda params, role, seed: [Path(params.data.root)],
    outputs=lambda params, role, seed: [paths.transfer_dir(role, seed)],
    swapped=paths.transfer_dir,
    # stages are by role, and dvc.yaml cannot look a role's model up to depend on its file
    bookkeeping=Bookkeeping(
        "source",
        paths.source_file,
        folders=(paths.RESULTS / "models",),
        chosen=lambda params, role, seed: [paths.model_file(params.source_model(role), seed)],
    ),
)

# what this stage writes in results/transfer/ROLE/seedS/ (replaced whole): the manifest and
# one ``set_name(attack, eps)``.pt per set; anything else there is the user's
_SET_FILE = re.compile(rf"(?:{NAME_PATTERN.pattern})_eps[0-9][0-9.e+-]*\.pt")


def ours(filename: str) -> bool:
    return filename == "manifest.json" or _SET_FILE.fullmatch(filename) is not None


def run(params, role: str, seed: int, *, device: str, tracker=None) -> dict[str, float]:
    """Make every set of ``role``'s seed-``seed`` source and write them with their manifest in
    ``paths.transfer_dir(role, seed)``; metrics: the source's accuracy on each set and the wall
    seconds (logged to ``tracker`` with the manifest)."""
    from .. import compute
    from ..config.data import data_name
    from ..data import load_split
    from ..evaluation.finite import finite_logits, retrain_remedy
    from ..evaluation.transfer import test_hash
    from ..io import write_json
    from .files import load_checked_model, stage_lock, swapped_in

    ev = params.evaluate
    source = params.source_model(role)
    rows = params.table1.rows_made_on(source)
    spec = params.model(source)
    model, _, _ = load_checked_model(params, source, seed, device)
    switches = compute.resolve(params.compute, device)
    model = finite_logits(compute.prepare(model, switches), source, retrain_remedy(source, seed))
    x_u8, y = load_split(
        data_name(params.data, spec.dataset),
        params.data.root,
        "test",
        val_size=params.data.val_size,
        limit=ev.test_limit,
    )
    who, tested = output_identity(CONTRACT, params, role, seed), test_hash(x_u8, y)
    out = paths.transfer_dir(role, seed)
    t0 = time.monotonic()
    # readers (evaluate) share the "transfer-files" lock: they never see a half-done swap
    with swapped_in(out, ours, "transfer", guard=lambda: stage_lock("transfer-files", role, seed, wait=True)) as tmp:
        entries, metrics = _make_sets(
            params,
            source,
            rows,
            model,
            switches,
            x_u8,
            y,
            norm=spec.norm,
            device=device,
            folder=tmp,
            identity=who,
            tested=tested,
        )
        sets = [entries[row] for row in rows]  # the manifest lists them in Table 1's order
        manifest = {
            "source": source,
            "role": role,
            "seed": seed,
            "dataset": data_name(params.data, spec.dataset),
            "norm": spec.norm,
            "n": int(len(y)),
            "test_limit": ev.test_limit,
            "identity": who,
            "test_sha256": tested,
            "sets": sets,
        }
        # the time goes to MLflow, not the manifest: equal sets make equal bytes (evaluate's inputs hash it)
        metrics["wall_seconds"] = round(time.monotonic() - t0, 1)
        write_json(tmp / "manifest.json", manifest)
    if tracker is not None:
        tracker.log_metrics(metrics)
        tracker.log_artifact(out / "manifest.json", "transfer")
    return metrics


def _make_sets(
    params,
    source: str,
    rows: list,
    model,
    switches,
    x_u8,
    y,
    *,
    norm: str,
    device: str,
    folder: Path,
    identity: dict,
    tested: str,
) -> tuple[dict, dict[str, float]]:
    """Make the set of every row on ``model`` (the source, ``norm`` its threat model's) and save
    it in ``folder`` stamped with ``identity`` and ``tested`` (the test images' sha256).
    x_u8: the test images (N, ...) uint8, y: (N,).  Returns ({row: manifest entry},
    {"source_accuracy/RECORD": the source's accuracy (%) on that set})."""
    import torch

    from .. import compute
    from ..evaluation.records import attack_record, record_key
    from ..evaluation.transfer import build_sets, family, save_set, set_name
    from ..evaluation.whitebox import predict, seed_for

    ev = params.evaluate
    # the rows of one ε whose settings differ only in restarts (PGD-50×1 and ×2) come from
    # one run: the ×1 set is the ×2 set's first restart (``build_sets``)
    groups: dict = {}
    for row in rows:
        groups.setdefault((row.eps, family(params.attacks[row.attack])), []).append(row)
    entries, metrics = {}, {}
    for (eps, fam), group in groups.items():
        settings = [params.attacks[row.attack] for row in group]
        with compute.attacks(switches):
            x_advs = build_sets(
                model,
                x_u8,
                y,
                eps,
                settings,
                norm=norm,
                loss=ev.loss,
                seed=seed_for(params.seed, source, "transfer", fam, eps),
                batch_size=ev.batch_size,
                device=device,
                source=source,
                description=f"transfer {source}: {' + '.join(s.label() for s in settings)} ε={eps:g}",
            )
        for row, setting, x_adv in zip(group, settings, x_advs):
            record = attack_record(
                "transfer", setting, row.eps, loss=ev.loss, n=len(y), seed=params.seed, source=source
            )
            fname = f"{set_name(row.attack, row.eps)}.pt"
            save_set(
                folder / fname, x_adv, y, {"record": record_key(record), "identity": identity, "test_sha256": tested}
            )
            # the source's own accuracy on the set (how strong the attack is where it was made)
            with torch.no_grad():
                pred = predict(model, x_adv.to(device).float().div_(255), ev.batch_size)
            acc = 100.0 * float((pred.cpu() == y).float().mean())
            entries[row] = {"file": fname, "record": record_key(record), "attack": row.attack, "source_accuracy": acc}
            metrics[f"source_accuracy/{record_key(record)}"] = acc
    return entries, metrics


def load_sets(params, source: str, seed: int, x_u8, y) -> list:
    """(manifest entry, uint8 images) of every set made on member (``source``, ``seed``), each
    checked against the params and the evaluated test images (``x_u8``, ``y``: the first n)."""
    from ..evaluation.transfer import check_set, load_set, test_hash
    from ..io import read_json
    from .files import check_identity, stage_lock

    role = params.role_of(source)
    folder = paths.transfer_dir(role, seed)
    remedy = f"rerun `mma transfer --role {role} --seed {seed}`"
    norm = params.model(source).norm
    want = output_identity(CONTRACT, params, role, seed)
    with stage_lock("transfer-files", role, seed, shared=True, wait=True):
        manifest = read_json(folder / "manifest.json", remedy=remedy)
        try:
            entries, n, tested = manifest["sets"], int(manifest["n"]), manifest["test_sha256"]
            files = [(e, e["file"], e["record"]) for e in entries]
        except (KeyError, TypeError, ValueError) as e:
            from ..io import BadFileError

            raise BadFileError(f"{folder / 'manifest.json'}: not a transfer manifest (no {e}); {remedy}") from None
        check_identity(folder / "manifest.json", manifest.get("identity"), want, remedy)
        if n != len(y) or tested != test_hash(x_u8, y):
            from ..io import BadFileError

            raise BadFileError(
                f"{folder / 'manifest.json'}: its sets were made on other test images ({n} images, "
                f"test sha256 {str(tested)[:12]}…) than those evaluated now ({len(y)}, "
                f"{test_hash(x_u8, y)[:12]}…; data or evaluate.test_limit changed?); {remedy}"
            )
        out = []
        for entry, fname, record in files:
            path = folder / fname
            x, meta = load_set(path, remedy=remedy)
            check_identity(path, meta.get("identity"), want, remedy)
            check_set(path, x, meta, x_u8, y, record=record, norm=norm, test_sha256=tested, remedy=remedy)
            out.append((entry, x))
    return out
