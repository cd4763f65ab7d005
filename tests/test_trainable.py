"""The trial function: per-epoch reports with checkpoints, resume, records; the artifact lock."""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from trainables.artifacts import ArtifactStore
from trainables.config import PipelineConfig
from trainables.records import TrialSpec
from trainables.trainable import TrialContext, run_trial


def asked(regime: str, lr: float, seed: int) -> dict:
    """The Tune config of a search trial on the last of the fixture's 2 IMP rounds."""
    return TrialSpec(regime, lr, (seed,), prune_round=2).as_config()


def interrupted_after_epoch_1(config: dict, ctx, trial_id: str, saved: Path) -> Path:
    """Run the trial until its first checkpoint (a copy kept at ``saved``), then let it die."""
    def interrupted(metrics, ckpt):
        if metrics["epoch"] == 1:
            shutil.copytree(ckpt, saved)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_trial(config, ctx, trial_id, interrupted)
    return saved


@pytest.fixture
def ctx(tmp_path, data_dir):
    cfg = PipelineConfig().updated(data_dir=data_dir, epochs=3, rounds=2, sparsity=0.6)
    return TrialContext("s", str(tmp_path / "study"), cfg)


def test_reports_every_epoch_with_a_checkpoint_and_writes_the_record(ctx, tmp_path):
    from dataclasses import replace
    ctx = replace(ctx, checkpoint_every=1)
    reports = []

    def report(metrics, ckpt):
        reports.append((metrics, ckpt is not None))
    rec, = run_trial(asked("winning_ticket", 0.05, 0), ctx, "t1", report)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert [c for _, c in reports] == [True, True, False]  # the finished trial needs no checkpoint
    assert reports[-1][0]["done"] and reports[-1][0]["val_acc"] == rec.val_acc
    written = json.loads((tmp_path / "study" / "trial-records" / "t1.json").read_text())
    assert len(written["sha256"]) == 64  # checked when read (tests/test_damaged.py)
    on_disk = written["records"][0]
    assert on_disk["val_acc"] == rec.val_acc and len(on_disk["history"]) == 3
    assert [p["name"] for p in on_disk["stages"]] == ["pretrain", "imp_round_1"]
    assert on_disk["achieved_sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_resume_from_a_checkpoint_counts_every_epoch_once(ctx, tmp_path):
    from dataclasses import replace
    ctx = replace(ctx, checkpoint_every=1)
    config = asked("random_reinit", 0.05, 1)
    full, = run_trial(config, replace(ctx, study_dir=str(tmp_path / "apart")), "full", lambda m, c: None)  # own store
    saved = interrupted_after_epoch_1(config, ctx, "again", tmp_path / "ckpt")
    assert sorted(p.name for p in saved.iterdir()) == ["trial.pt", "trial.pt.sha256.json"]  # its digest beside it
    epochs = []
    rec, = run_trial(config, ctx, "again", lambda m, c: epochs.append(m["epoch"]), str(saved))
    assert epochs == [2, 3] and rec.resumed_from_epoch == 1
    assert [h["epoch"] for h in rec.history] == [1, 2, 3]
    assert rec.val_acc == full.val_acc and rec.test_acc == full.test_acc


def test_a_repeated_configuration_is_answered_from_its_result(ctx, tmp_path):
    first, = run_trial(asked("winning_ticket", 0.05, 0), ctx, "first", None)
    reports = []
    again, = run_trial(asked("winning_ticket", 0.05, 0), ctx, "again", lambda m, c: reports.append(m))
    assert first.reused_from is None and again.reused_from == "first"
    assert again.history == first.history and again.val_acc == first.val_acc
    assert len(reports) == 1 and reports[0]["done"]  # no training: the final result at once
    other, = run_trial(asked("winning_ticket", 0.1, 0), ctx, "other", None)  # another LR trains
    assert other.reused_from is None
    results = [p for p in (tmp_path / "study" / "artifacts").iterdir() if p.name.startswith("result-")]
    assert len(results) == 2


def test_the_seeds_of_one_configuration_train_together_one_record_each(ctx, tmp_path):
    from dataclasses import replace
    alone, = run_trial(asked("random_reinit", 0.05, 2), replace(ctx, study_dir=str(tmp_path / "apart")), "a", None)
    run_trial(asked("random_reinit", 0.05, 1), ctx, "one", None)  # seed 1 is trained already: answered
    reports = []
    spec = TrialSpec("random_reinit", 0.05, (1, 2, 3), "confirm", "tuned", prune_round=2)
    recs = run_trial(spec.as_config(), ctx, "three", lambda m, c: reports.append(m))
    assert [r.trial_id for r in recs] == ["three-s1", "three-s2", "three-s3"]
    assert [r.spec for r in recs] == spec.per_seed() and [r.reused_from for r in recs] == ["one", None, None]
    assert recs[1].val_acc == pytest.approx(alone.val_acc, abs=2e-3)  # stacked with seed 3, as if alone
    assert recs[1].seeds.reinit_seed != recs[2].seeds.reinit_seed
    assert [m["epoch"] for m in reports] == [1, 2, 3] and reports[-1]["done"]
    assert reports[-1]["val_acc"] == pytest.approx(sum(r.val_acc for r in recs) / 3)
    on_disk = json.loads((tmp_path / "study" / "trial-records" / "three.json").read_text())["records"]
    assert [r["trial_id"] for r in on_disk] == ["three-s1", "three-s2", "three-s3"]


def test_seeds_trained_one_after_another_resume_at_the_seed_interrupted(ctx, tmp_path, monkeypatch):
    """Seeds that do not stack (2-D convolutions on the CPU) train alone, each checkpointed and
    stored when done: an interrupted trial finds the first seed and resumes the second at its epoch."""
    from dataclasses import replace

    import trainables.trainable as trainable
    monkeypatch.setattr(trainable, "stacks", lambda models, specs: False)  # as for a VGG on the CPU
    ctx = replace(ctx, checkpoint_every=1)
    config = TrialSpec("winning_ticket", 0.05, (1, 2), "confirm", "tuned", prune_round=2).as_config()
    full = run_trial(config, replace(ctx, study_dir=str(tmp_path / "apart")), "full", None)
    saved, seen = tmp_path / "ckpt", []

    def interrupted(metrics, ckpt):
        seen.append(metrics["epoch"])
        if len(seen) == 3:  # seed 1: epochs 1 and 2 reported (its last is not), seed 2: epoch 1
            shutil.copytree(ckpt, saved)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_trial(config, ctx, "again", interrupted)
    epochs = []
    recs = run_trial(config, ctx, "again", lambda m, c: epochs.append(m["epoch"]), str(saved))
    assert epochs == [2, 3] and [r.resumed_from_epoch for r in recs] == [None, 1]  # seed 1 was stored
    assert [r.reused_from for r in recs] == [None, None]
    assert [(r.val_acc, r.test_acc) for r in recs] == [(r.val_acc, r.test_acc) for r in full]


def test_checkpoint_every_n_epochs(ctx, tmp_path):
    from dataclasses import replace
    sparse_ctx = replace(ctx, checkpoint_every=2, pipeline=ctx.pipeline.updated(epochs=5))
    flags = []
    run_trial(asked("winning_ticket", 0.05, 0), sparse_ctx, "t", lambda m, c: flags.append(c is not None))
    assert flags == [False, True, False, True, False]


def test_slow_epochs_are_checkpointed_every_epoch(ctx, monkeypatch):
    from dataclasses import replace
    import trainables.trainable as tr
    monkeypatch.setattr(tr, "CHECKPOINT_MAX_GAP_S", 0.0)  # every epoch counts as slow
    flags = []
    run_trial(asked("winning_ticket", 0.05, 0), replace(ctx, checkpoint_every=10), "t",
              lambda m, c: flags.append(c is not None))
    assert flags == [True, True, False]


def test_diverged_pretraining_ends_the_trial_with_its_accuracy(ctx):
    reports = []
    rec, = run_trial(asked("winning_ticket", 1e4, 0), ctx, "d", lambda m, c: reports.append(m))
    assert rec.diverged and rec.diverged_stage == "pretrain"
    assert len(reports) == 1 and reports[0]["diverged"] and 0 <= reports[0]["val_acc"] <= 1


def test_concurrent_requests_compute_an_artifact_once(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    calls, results = [], []

    def compute(tmp):
        calls.append(1)
        time.sleep(0.5)
        (tmp / "x.txt").write_text("done")
        return {"value": 42}

    def worker():
        results.append(ArtifactStore(tmp_path / "a").get_or_create("k", {"x": 1}, compute))
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len({r.path for r in results}) == 1 and sum(r.computed for r in results) == 1
    assert all(r.meta["value"] == 42 for r in results)
    assert (results[0].path / "x.txt").read_text() == "done"
    assert store.find("k", {"x": 1}) is not None and not list((tmp_path / "a").glob(".tmp-*"))


def test_a_failed_computation_leaves_nothing_behind(tmp_path):
    store = ArtifactStore(tmp_path / "a")

    def boom(tmp):
        (tmp / "partial").write_text("half")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        store.get_or_create("k", {"x": 2}, boom)
    assert store.find("k", {"x": 2}) is None
    assert [p.name for p in (tmp_path / "a").iterdir()] == [".locks"]


def test_a_uri_store_shares_artifacts_and_records(tmp_path, data_dir):
    """The object-store code path (no rename, no lock; meta.json last), through a file:// URI."""
    uri = f"file://{tmp_path / 'bucket'}/study"
    cfg = PipelineConfig().updated(data_dir=data_dir, epochs=2, rounds=2, sparsity=0.6)
    ctx = TrialContext("s", str(tmp_path / "local"), cfg, storage=uri)
    rec, = run_trial(asked("winning_ticket", 0.05, 0), ctx, "u1", None)
    store = ArtifactStore(ctx.artifact_root)
    assert not store.storage.local
    mask = rec.artifacts.mask
    assert (tmp_path / "bucket" / "study" / "artifacts" / mask / "meta.json").exists()
    assert (tmp_path / "bucket" / "study" / "trial-records" / "u1.json").exists()
    assert not (tmp_path / "local").exists()  # nothing of the trial's went to the driver's folder
    again, = run_trial(asked("random_reinit", 0.05, 0), ctx, "u2", None)
    assert again.artifacts.mask == mask  # found in the store, not recomputed
    kind, h = mask.split("-", 1)
    found = [a for a in (tmp_path / "bucket" / "study" / "artifacts").iterdir() if a.name == mask]
    assert len(found) == 1 and json.loads((found[0] / "spec.json").read_text())["kind"] == kind


@pytest.mark.parametrize("damage", ["truncate", "flip a bit", "delete"])
@pytest.mark.parametrize("where", ["local", "uri"])
def test_a_damaged_artifact_is_moved_aside_and_computed_again(tmp_path, capsys, damage, where):
    """Every file's digest is in meta.json: a truncated, bit-flipped or missing tensor file is found
    out when the artifact is looked up; the folder is moved to damaged/ (kept), named in one line,
    and the stage computed again through the same code; one damaged after it was found never
    loads."""
    import torch

    from trainables.artifacts import DamagedArtifact, save_tensors
    root = f"file://{tmp_path / 'bucket'}/a" if where == "uri" else tmp_path / "a"
    store = ArtifactStore(root)
    calls = []

    def compute(tmp):
        calls.append(1)
        save_tensors(tmp, {"w": torch.arange(1000, dtype=torch.float32)})
        return {"value": 7}
    art = store.get_or_create("init", {"seed": 3}, compute)
    folder = (tmp_path / "bucket" / "a" if where == "uri" else tmp_path / "a") / art.name
    tensors = folder / "tensors.pt"
    assert set(art.meta["digests"]) == {"tensors.pt", "spec.json"} and len(calls) == 1
    data = tensors.read_bytes()
    if damage == "truncate":
        tensors.write_bytes(data[: len(data) // 2])
    elif damage == "flip a bit":
        tensors.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        tensors.unlink()
    with pytest.raises(DamagedArtifact):
        art.tensors()  # found before the damage: never loaded
    again = store.get_or_create("init", {"seed": 3}, compute)
    assert len(calls) == 2 and again.computed and torch.equal(again.tensors()["w"], torch.arange(1000.0))
    said = [ln for ln in capsys.readouterr().out.splitlines() if "was damaged" in ln]
    assert len(said) == 1 and art.name in said[0] and "computing it again" in said[0]
    aside = list((folder.parent / "damaged").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(art.name) and (aside[0] / "meta.json").exists()
    assert store.find("init", {"seed": 3}) is not None  # the rebuilt one passes
    assert store.damaged_since(time.time() - 60) == [aside[0].name]  # what the driver names at the end
    assert store.damaged_since(time.time() + 5) == []
    found = store.find("init", {"seed": 3})
    tensors.write_bytes(b"")  # damaged after the lookup: the bytes checked then are the ones loaded
    assert torch.equal(found.tensors()["w"], torch.arange(1000.0))
    with pytest.raises(DamagedArtifact):
        found.tensors()  # a second load reads the file again, and checks it
