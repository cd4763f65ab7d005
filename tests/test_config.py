"""The configs make the flags: one default per setting, a study kind is a preset, study.json rebuilds
the config exactly, and --help answers without loading torch."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import fields

import pytest

from study.cli import build_parser, study_config
from study.config import PRESETS, StudyConfig, preset, section_fields
from tests.conftest import ROOT
from trainables.config import ConfigError, flag
from trainables.records import TrialRecord, TrialSpec


def test_help_answers_quickly_without_torch():
    code = ("import sys, time; t = time.perf_counter(); from study.cli import build_parser; "
            "build_parser('lottery').format_help(); build_parser('rethinking').format_help(); "
            "print(time.perf_counter() - t, 'torch' in sys.modules, 'optuna' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    seconds, *heavy = out.split()
    assert float(seconds) < 1.0 and heavy == ["False", "False", "False"], out
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "study.lottery", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "--num-samples" in r.stdout and time.perf_counter() - t < 2.0


def test_every_setting_is_one_flag_with_its_default_and_help():
    parser = build_parser("lottery")
    flags = {s for a in parser._actions for s in a.option_strings if s != "-h" and s != "--help"}
    made = set()
    for part, f in section_fields(StudyConfig()):
        made.add(flag(f"no_{f.name}") if f.type == "bool" and getattr(part, f.name) else flag(f.name))
        assert f.metadata["help"], f.name
    assert flags == made
    names = [f.name for _, f in section_fields(StudyConfig())]
    assert len(names) == len(set(names))  # one name per setting, wherever it sits
    text = " ".join(parser.format_help().split())
    assert "(default: 64)" in text and "(default: winning_ticket,random_reinit)" in text


def test_the_rethinking_study_is_a_preset_of_defaults():
    lottery, rethinking = preset("lottery"), preset("rethinking")
    assert rethinking.kind == "rethinking" and rethinking.regimes == ("fine_tune", "scratch_e", "scratch_b")
    changed = {n for n in lottery.leaf_names() if lottery.value(n) != rethinking.value(n)}
    assert changed == set(PRESETS["rethinking"]) - {n for n, v in PRESETS["rethinking"].items()
                                                    if lottery.value(n) == v} | {"kind"}
    assert "(default: fine_tune,scratch_e,scratch_b)" in " ".join(build_parser("rethinking").format_help().split())


def test_study_json_rebuilds_the_config_exactly(tmp_path, data_dir):
    cfg = study_config({"regimes": ("late_rewind", "fine_tune"), "widths": (64, 32), "prune_layers": ("net.1",),
                        "root": str(tmp_path / "s"), "data_dir": data_dir, "num_samples": 3}, "lottery")
    back = StudyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.study_hash() == cfg.study_hash()
    assert cfg.execution.name == f"lottery-{cfg.study_hash()[:10]}"
    moved = cfg.updated(root=str(tmp_path / "elsewhere"), address="10.0.0.1:6379", data_dir=str(tmp_path))
    assert moved.study_hash() == cfg.study_hash()  # where it runs and where the data is cached change nothing
    assert cfg.updated(epochs=3).study_hash() != cfg.study_hash()
    with pytest.raises(ValueError, match="unknown"):
        StudyConfig.from_dict({**cfg.to_dict(), "nonsense": 1})


def test_each_config_checks_its_own_fields():
    cfg = StudyConfig()
    for bad, name in (({"epochs": 0}, "epochs"), ({"val_fraction": 1.0}, "val_fraction"),
                      ({"sparsity": 1.0}, "sparsity"), ({"confirm_seeds": 0}, "confirm_seeds"),
                      ({"cpus_per_trial": 0.0}, "cpus_per_trial"), ({"num_samples": 0}, "num_samples"),
                      ({"momentum": float("nan")}, "momentum"), ({"schedule": "linear"}, "schedule")):
        with pytest.raises(ConfigError) as e:
            cfg.updated(**bad).check()
        assert e.value.name == name
    with pytest.raises(TypeError, match="no setting"):
        cfg.updated(epoch=3)


def test_trial_records_round_trip_and_name_one_concept_once():
    spec = TrialSpec("winning_ticket", 0.1, (3,), "confirm", "tuned", 2)
    assert TrialSpec.from_config(spec.as_config()) == spec and spec.group == "winning_ticket/confirm"
    with pytest.raises(ValueError):
        TrialSpec("winning_ticket", 0.1, (3,), phase="pretrain")  # a stage, not a phase
    rec = TrialRecord("s", "t", spec, {"epochs": 2}, val_acc=0.5, test_acc=0.4, diverged_stage=None)
    assert TrialRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    assert {f.name for f in fields(TrialRecord)} & {"phase", "diverged_phase", "phases"} == set()
    assert rec.metrics() == {"final_val_acc": 0.5, "final_test_acc": 0.4, "diverged": 0.0}
