"""The transfer stage: adversarial test sets made on one source model.

    results/transfer/SOURCE/ATTACK_epsE.pt   one set per Table-1 row made on SOURCE
                                              (``table1.rows_made_on``): zlib-compressed
                                              8-bit images, weights-only loadable
    results/transfer/SOURCE/manifest.json    each file's record (``mma.evaluation.records``)

Restarts are chosen on the source (the attacker has only the source model).
"""

from __future__ import annotations

import time

from .. import paths


def run(params, source: str, *, device: str, tracker=None) -> dict[str, float]:
    import torch

    from .. import compute
    from ..data import load_split
    from ..evaluation.records import attack_record, record_key
    from ..evaluation.transfer import build_set, save_set, set_name
    from ..evaluation.whitebox import predict, seed_for
    from ..io import write_json
    from ..train import load_model

    ev = params.evaluate
    rows = params.table1.rows_made_on(source)
    spec = params.model(source)
    model, _, _ = load_model(paths.model_file(source), device)
    switches = compute.resolve(params.compute, device)
    model = compute.prepare(model, switches)
    x_u8, y = load_split(spec.dataset, params.data.root, "test", val_size=params.data.val_size, limit=ev.test_limit)
    out = paths.transfer_dir(source)
    sets, metrics = [], {}
    t0 = time.monotonic()
    for row in rows:
        setting = params.attacks[row.attack]
        with compute.attacks(switches):
            x_adv = build_set(model, x_u8, y, row.eps, setting, norm=spec.norm, loss=ev.loss,
                              seed=seed_for(params.seed, source, "transfer", row.attack, row.eps),
                              batch_size=ev.batch_size, device=device,
                              description=f"transfer {source}: {setting.label()} ε={row.eps:g}")
        record = attack_record("transfer", setting, row.eps, loss=ev.loss, n=len(y), seed=params.seed, source=source)
        fname = f"{set_name(row.attack, row.eps)}.pt"
        save_set(out / fname, x_adv, y, {"record": record_key(record)})
        # the source's own accuracy on the set (how strong the attack is where it was made)
        with torch.no_grad():
            pred = predict(model, x_adv.to(device).float().div_(255), ev.batch_size)
        acc = 100.0 * float((pred.cpu() == y).float().mean())
        sets.append({"file": fname, "record": record_key(record), "attack": row.attack, "source_accuracy": acc})
        metrics[f"source_accuracy/{record_key(record)}"] = acc
    manifest = {"source": source, "dataset": spec.dataset, "norm": spec.norm, "n": int(len(y)),
                "test_limit": ev.test_limit, "sets": sets, "wall_seconds": round(time.monotonic() - t0, 1)}
    write_json(out / "manifest.json", manifest)
    if tracker is not None:
        tracker.log_metrics(metrics)
        tracker.log_artifact(out / "manifest.json", "transfer")
    return metrics
