"""Damaged trial checkpoints and record files (real files, real torch): a trial never trains from a
damaged checkpoint (it starts from its stored stages instead), the driver moves a damaged record copy
aside and counts its trial as not done, and a damaged trial record is refused."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from tests.test_trainable import asked, interrupted_after_epoch_1
from trainables.config import PipelineConfig
from trainables.record_store import RecordStore, load_records
from trainables.records import DamagedRecord, TrialRecord, TrialSpec, parse_records, record_text, records_text
from trainables.storage import Storage
from trainables.trainable import (CHECKPOINT_DIGEST, CHECKPOINT_FILE, DamagedCheckpoint, TrialContext,
                                  read_checkpoint, run_trial, write_checkpoint)


@pytest.fixture
def ctx(tmp_path, data_dir):
    cfg = PipelineConfig().updated(data_dir=data_dir, epochs=3, rounds=2, sparsity=0.6)
    return TrialContext("s", str(tmp_path / "study"), cfg, checkpoint_every=1)


def _flip(path, at: float = 0.5) -> None:
    data = path.read_bytes()
    i = int(len(data) * at)
    path.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _without_seconds(history) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


CHECKPOINT_DAMAGE = {  # how the checkpoint is damaged -> the reason the trial's line gives
    "truncated": (lambda d: _truncate(d / CHECKPOINT_FILE), "truncated"),
    "bit flipped": (lambda d: _flip(d / CHECKPOINT_FILE), "sha256 mismatch"),
    "digest removed": (lambda d: (d / CHECKPOINT_DIGEST).unlink(), "no digest"),
}


def test_a_damaged_checkpoint_starts_the_trial_from_its_stored_stages(ctx, tmp_path, capsys):
    """An interrupted trial's checkpoint, truncated, bit-flipped or without its digest: the trial
    says so in one line, trains from its start point (the stored stages, not computed again) and
    ends exactly as a trial run without any checkpoint; Tune's checkpoint folder is left as it is."""
    config = asked("random_reinit", 0.05, 1)
    full, = run_trial(config, replace(ctx, study_dir=str(tmp_path / "apart")), "full", None)  # own store
    saved = interrupted_after_epoch_1(config, ctx, "again", tmp_path / "ckpt")
    assert {p.name for p in saved.iterdir()} == {CHECKPOINT_FILE, CHECKPOINT_DIGEST}
    assert read_checkpoint(saved)["record"] == "again"  # intact, it would resume
    artifacts = tmp_path / "study" / "artifacts"
    stages = sorted(p.name for p in artifacts.iterdir() if not p.name.startswith(("result-", ".")))
    capsys.readouterr()
    for damage, (spoil, why) in CHECKPOINT_DAMAGE.items():
        for done in artifacts.glob("result-*"):  # the last damage's retraining: trained again here
            shutil.rmtree(done)
        ckpt = tmp_path / f"ckpt-{damage.replace(' ', '-')}"
        shutil.copytree(saved, ckpt)
        spoil(ckpt)
        left = sorted(p.name for p in ckpt.iterdir())
        epochs = []
        rec, = run_trial(config, ctx, "again", lambda m, c: epochs.append(m["epoch"]), str(ckpt))
        assert epochs == [1, 2, 3] and rec.resumed_from_epoch is None, damage  # every epoch trained again
        assert rec.reused_from is None
        assert (rec.val_acc, rec.test_acc) == (full.val_acc, full.test_acc), damage
        assert _without_seconds(rec.history) == _without_seconds(full.history), damage
        said = [ln for ln in capsys.readouterr().out.splitlines() if "damaged" in ln]
        assert len(said) == 1 and said[0].startswith(f"checkpoint of trial again is damaged ({why}"), (damage, said)
        assert said[0].endswith("): starting the trial from its stored stages"), said
        assert sorted(p.name for p in ckpt.iterdir()) == left  # Tune's folder: kept as it was
        assert sorted(p.name for p in artifacts.iterdir()
                      if not p.name.startswith(("result-", "."))) == stages  # no stage recomputed
        assert not (artifacts / "damaged").exists()


def test_read_checkpoint_refuses_what_it_cannot_trust(tmp_path):
    """Every way a checkpoint can fail, without training: missing, no digest, an unreadable digest,
    truncated, changed, a matching digest over bytes torch cannot load, not a trial's checkpoint."""
    import torch

    good = tmp_path / "good"
    good.mkdir()
    write_checkpoint(good, {"state": {"w": torch.arange(100.0)}, "history": [], "record": "t"})
    assert torch.equal(read_checkpoint(good)["state"]["w"], torch.arange(100.0))

    def damaged(change) -> str:
        d = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        shutil.copytree(good, d)
        change(d)
        with pytest.raises(DamagedCheckpoint) as exc:
            read_checkpoint(d)
        return str(exc.value)

    def garbage_with_digest(d):
        write_checkpoint(d, {"state": {}, "history": [], "record": "t"})
        digest = json.loads((d / CHECKPOINT_DIGEST).read_text())
        import hashlib
        junk = b"not a zip file" * 10
        (d / CHECKPOINT_FILE).write_bytes(junk)
        (d / CHECKPOINT_DIGEST).write_text(json.dumps({**digest, "bytes": len(junk),
                                                       "sha256": hashlib.sha256(junk).hexdigest()}))
    assert damaged(lambda d: (d / CHECKPOINT_FILE).unlink()) == f"{CHECKPOINT_FILE} is missing"
    assert damaged(lambda d: (d / CHECKPOINT_DIGEST).unlink()) == "no digest"
    assert damaged(lambda d: _truncate(d / CHECKPOINT_DIGEST)).startswith("its digest cannot be read")
    assert damaged(lambda d: _truncate(d / CHECKPOINT_FILE)).startswith("truncated: ")
    assert damaged(lambda d: _flip(d / CHECKPOINT_FILE)) == "sha256 mismatch"
    assert damaged(lambda d: (d / CHECKPOINT_FILE).write_bytes((d / CHECKPOINT_FILE).read_bytes() + b"x")) \
        == "sha256 mismatch"
    assert damaged(garbage_with_digest).startswith("cannot be loaded: ")
    assert damaged(lambda d: write_checkpoint(d, {"weights": torch.zeros(1)})) == "not a trial checkpoint"


def _record(tid: str, val: float = 0.5) -> TrialRecord:
    return TrialRecord("s", tid, TrialSpec("winning_ticket", 0.05, (0,)), {"epochs": 3, "widths": [16, 8]},
                       history=({"epoch": 1, "val_acc": val, "train_loss": 0.75},),
                       layer_sparsity={"fc.0": 0.6}, val_acc=val, test_acc=val - 0.01, train_loss=0.25,
                       wall_seconds=1.5)


RECORD_DAMAGE = {  # how a record file is damaged -> (how, what the line says)
    "truncated": (_truncate, "not JSON"),
    "a value changed": (lambda p: p.write_text(p.read_text().replace('"val_acc": 0.5', '"val_acc": 0.9')),
                        "sha256 mismatch"),
    "bit flipped": (_flip, ""),  # invalid JSON or a digest mismatch, depending on where it lands
    "emptied": (lambda p: p.write_bytes(b""), "not JSON"),
    "not UTF-8": (lambda p: p.write_bytes(b"\xff\xfe" + p.read_bytes()), "not UTF-8"),
}


@pytest.mark.parametrize("damage", sorted(RECORD_DAMAGE))
def test_a_damaged_driver_copy_is_moved_aside_and_its_trial_is_not_done(tmp_path, capsys, damage):
    """The driver's copies in records/: a damaged one is moved to records/damaged/ (kept, bytes as
    found), named in one line and left out; the others (one written before digests among them) load."""
    records = tmp_path / "study" / "records"
    records.mkdir(parents=True)
    for tid in ("a", "b"):
        (records / f"{tid}.json").write_text(record_text(_record(tid)))
    (records / "old.json").write_text(json.dumps(_record("old", 0.7).to_json()))  # before digests: trusted
    (records / ".tmp-1234abcd-c.json").write_text('{"half": ')  # a copy being written: not read, not moved
    spoil, why = RECORD_DAMAGE[damage]
    spoil(records / "b.json")
    spoiled = (records / "b.json").read_bytes()
    loaded = load_records(tmp_path / "study")
    assert [r.trial_id for r in loaded] == ["a", "old"]
    assert loaded[0] == _record("a") and loaded[1] == _record("old", 0.7)
    said = capsys.readouterr().out.splitlines()
    aside = list((records / "damaged").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("b-") and aside[0].suffix == ".json"
    assert aside[0].read_bytes() == spoiled  # kept as it was found
    assert len(said) == 1 and said[0].startswith(f"record b was damaged ({why}"), said
    assert said[0].endswith(f": moved to records/damaged/{aside[0].name}; the trial counts as not done"), said
    assert not (records / "b.json").exists() and (records / ".tmp-1234abcd-c.json").exists()
    assert [r.trial_id for r in load_records(tmp_path / "study")] == ["a", "old"]  # said once, not again
    assert capsys.readouterr().out == ""
    (records / "b.json").write_text(record_text(_record("b")))  # finalised again: counted again
    assert [r.trial_id for r in load_records(tmp_path / "study")] == ["a", "b", "old"]


def test_the_record_formats_round_trip_and_old_files_are_trusted():
    """A driver's copy is the record's JSON with its sha256 beside the fields (readers of the fields
    are unaffected); a trial's file holds its records and their sha256; both forms without a digest
    (written before digests) are read as they are."""
    rec = _record("t")
    text = record_text(rec)
    assert json.loads(text)["val_acc"] == 0.5 and len(json.loads(text)["sha256"]) == 64
    assert parse_records(text) == [rec] and parse_records(text.encode()) == [rec]
    assert parse_records(json.dumps(rec.to_json())) == [rec]  # the driver's copy before digests
    both = records_text([rec, _record("u", 0.6)])
    assert set(json.loads(both)) == {"records", "sha256"}
    assert parse_records(both) == [rec, _record("u", 0.6)]
    assert parse_records(json.dumps({"records": [rec.to_json()]})) == [rec]  # a trial's file before digests
    renamed = text.replace('"sha256"', '"sha257"')  # a flipped key is not taken for a file without digest
    with pytest.raises(DamagedRecord, match="not a trial record"):
        parse_records(renamed)
    with pytest.raises(DamagedRecord, match="sha256 mismatch"):  # nor a flipped "records" for one record
        parse_records(both.replace('"records"', '"recorfs"'))
    with pytest.raises(DamagedRecord, match="not a record file"):
        parse_records(json.dumps([rec.to_json()]))


@pytest.mark.parametrize("damage", sorted(RECORD_DAMAGE))
def test_read_records_refuses_a_damaged_trial_record(tmp_path, damage, capsys):
    """The trial's own copy in shared storage (as the trial writes it): refused with
    ``DamagedRecord`` (a ValueError), never read as other records; the store moves it to
    ``trial-records/damaged/`` and names it in one line."""
    recs = [_record("t-s1"), _record("t-s2", 0.6)]
    store = RecordStore(Storage(str(tmp_path / "study")))
    store.write_trial("t", recs)
    written = tmp_path / "study" / "trial-records" / "t.json"
    assert parse_records(written.read_bytes()) == recs and store.read_trial("t") == recs
    assert store.trial_ids() == ["t"] and store.read_trial("nobody") is None
    spoil, why = RECORD_DAMAGE[damage]
    spoil(written)
    with pytest.raises(DamagedRecord, match=why or None) as exc:
        parse_records(written.read_bytes())
    assert isinstance(exc.value, ValueError) and "\n" not in str(exc.value)
    with pytest.raises(DamagedRecord):
        store.read_trial("t", set_aside=False)
    assert written.exists()
    capsys.readouterr()
    with pytest.raises(DamagedRecord):
        store.read_trial("t")
    assert not written.exists() and store.trial_ids() == []
    aside, = (tmp_path / "study" / "trial-records" / "damaged").iterdir()
    assert capsys.readouterr().out == (f"the record file of trial t was damaged ({exc.value}): moved to "
                                       f"trial-records/damaged/{aside.name}\n")
