"""The train stage's curves (``mma.stages.train.Curves``): percent in the files and in MLflow,
appended once per flush, and what a kill between a checkpoint and its flush left is recovered
once on resume."""

from __future__ import annotations


def test_training_curves_in_percent_appended_once_per_flush(tmp_path):
    """The training loop logs fractions; the stage's files use percent.  Points logged after the
    last flush (a crash) are not in the file; a resumed run appends after the flushed ones."""
    from mma.stages.train import Curves, percent

    assert percent({"val_clean_acc": 0.76, "train_acc": 0.5, "loss": 0.3, "eps": 0.2}) == {
        "val_clean_acc": 76.0,
        "train_acc": 50.0,
        "loss": 0.3,
        "eps": 0.2,
    }
    sent = []
    c = Curves(tmp_path, log=lambda v, s: sent.append((s, v)), flush=lambda: sent.append("flush"))
    c.log({"loss": 1.0, "train_acc": 0.25}, 10)
    c.log({"val_clean_acc": 0.5}, 10)
    c.flush()
    c.log({"loss": 0.5, "train_acc": 0.5}, 20)  # lost with the crash
    resumed = Curves(tmp_path)
    resumed.log({"loss": 0.4, "train_acc": 0.75}, 20)
    resumed.flush()
    assert (tmp_path / "train.tsv").read_text() == "step\tloss\ttrain_acc\n10\t1\t25\n20\t0.4\t75\n"
    assert (tmp_path / "val.tsv").read_text() == "step\tval_clean_acc\n10\t50\n"
    assert sent[0] == (10, {"loss": 1.0, "train_acc": 25.0})  # MLflow gets percent too


def test_curves_recover_points_a_kill_left_between_checkpoint_and_flush(tmp_path):
    """A kill after the checkpoint at step 20 but before its flush: the journal holds steps
    11..25; on resume at 20, steps 11..20 reach the TSV and MLflow once, 21..25 are dropped
    (they are computed again), and what MLflow already holds is not sent twice."""
    from mma.stages.train import Curves

    sent = []
    first = Curves(tmp_path, log=lambda values, step: sent.append(step), flush=lambda: None)
    for step in range(1, 11):
        first.log({"loss": 1.0 / step, "acc": 0.5}, step)
    first.flush()  # the checkpoint at step 10 and its flush
    for step in range(11, 26):
        first.log({"loss": 1.0 / step, "acc": 0.5}, step)  # killed before the flush of step 20
    assert (tmp_path / "journal.jsonl").exists()
    with (tmp_path / "journal.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')  # the line the kill cut
    sent.clear()
    held = {"loss": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}  # MLflow got 11, 12 from a flush cut mid-way
    resumed = Curves(tmp_path, log=lambda values, step: sent.append(step), flush=lambda: None)
    resumed.recover(20, lambda key: held.get(key, []))
    assert sent == list(range(13, 21))
    rows = (tmp_path / "train.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in rows[1:]] == list(range(1, 21))
    assert float(rows[1 + 19].split("\t")[rows[0].split("\t").index("acc")]) == 50.0  # percent
    assert not (tmp_path / "journal.jsonl").exists()
