"""The transfer stage: adversarial test sets made on one source model.

    results/transfer/SOURCE/SETTING_epsE.pt   one set per (setting, ε) of the source's
                                               transfer.sources entry: zlib-compressed
                                               8-bit images, weights-only loadable
    results/transfer/SOURCE/manifest.json     what each file holds (setting, label, ε, loss, N)

Restarts are chosen on the source (the attacker has only the source model).
"""

from __future__ import annotations

import time

from .. import paths


def run(params, source: str, *, device: str, tracker=None) -> dict[str, float]:
    import torch

    from .. import compute
    from ..data import load_split
    from ..evaluation.transfer import build_set, save_set, set_name
    from ..evaluation.whitebox import predict, seed_for
    from ..io import write_json
    from ..train import load_model

    tr = params.transfer
    entry = tr.source(source)
    if entry is None:
        raise KeyError(f"{source!r} is not in transfer.sources ({', '.join(s.model for s in tr.sources)})")
    spec = params.model(source)
    model, _, _ = load_model(paths.model_file(source), device)
    switches = compute.resolve(params.compute, device)
    model = compute.prepare(model, switches)
    x_u8, y = load_split(spec.dataset, params.data.root, "test", val_size=params.data.val_size, limit=tr.test_limit)
    out = paths.transfer_dir(source)
    sets, metrics = [], {}
    t0 = time.monotonic()
    for sname in entry.settings:
        setting = tr.settings[sname]
        loss = setting.loss or tr.loss
        for eps in entry.eps:
            with compute.attacks(switches):
                x_adv = build_set(model, x_u8, y, eps, setting, norm=spec.norm, loss=loss,
                                  seed=seed_for(params.seed, source, "transfer", sname, eps),
                                  batch_size=tr.batch_size, device=device,
                                  description=f"transfer {source}: {setting.label()} ε={eps:g}")
            fname = f"{set_name(sname, eps)}.pt"
            info = {"source": source, "setting": sname, "label": setting.label(), "eps": float(eps),
                    "restarts": setting.restarts if setting.attack == "pgd" else 1,
                    "steps": setting.steps if setting.attack == "pgd" else 1, "loss": loss, "n": int(len(y))}
            save_set(out / fname, x_adv, y, info)
            # the source's own accuracy on the set (how strong the attack is where it was made)
            with torch.no_grad():
                pred = predict(model, x_adv.to(device).float().div_(255), tr.batch_size)
            acc = 100.0 * float((pred.cpu() == y).float().mean())
            sets.append({**info, "file": fname, "source_accuracy": acc})
            metrics[f"source_acc/{sname}/{eps:g}"] = acc
    manifest = {"source": source, "dataset": spec.dataset, "norm": spec.norm, "n": int(len(y)),
                "test_limit": tr.test_limit, "sets": sets, "wall_seconds": round(time.monotonic() - t0, 1)}
    write_json(out / "manifest.json", manifest)
    if tracker is not None:
        tracker.log_metrics(metrics)
        tracker.log_artifact(out / "manifest.json", "transfer")
    return metrics
