"""The real CLI: bad flags fail early; a tiny study runs end to end into Parquet, MLflow and Optuna."""
from __future__ import annotations

import math
import os
import re

import pyarrow.parquet as pq
import pytest

from study.lottery import main
from study.ui import free_port
from tests.conftest import K, N, N_CONFIRM, REGIMES, assert_refused, run_cli

def _gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


BAD = [
    (["--num-samples", "0"], "--num-samples"),
    (["--num-samples", "-3"], "--num-samples"),
    (["--lr-min", "0.5", "--lr-max", "0.1"], "--lr-max"),
    (["--lr-min", "0"], "--lr-min"),
    (["--sparsity", "1.0"], "--sparsity"),
    (["--sparsity", "0"], "--sparsity"),
    (["--regimes", "winning_ticket,lucky_guess"], "--regimes"),
    (["--model", "resnet9000"], "--model"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--rounds", "0"], "--rounds"),
    (["--epochs", "0"], "--epochs"),
    (["--schedule", "linear"], "--schedule"),
    (["--lr-grid", "2", "--lr-min", "0.2", "--lr-max", "0.3"], "--lr-grid"),
    (["--prune-layers", "net.1,nope"], "--prune-layers"),
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial"),
    (["--regimes", "late_rewind", "--rewind-epoch", "20"], "--rewind-epoch"),
    (["--name", "../escape"], "--name"),
    (["--num-samples", "many"], "--num-samples"),
    # non-finite numbers
    (["--lr-max", "inf"], "--lr-max"),
    (["--momentum", "nan"], "--momentum"),
    # a model that cannot take the data set's inputs (image models on the 1-D default)
    (["--model", "resnet56"], "--model"),
    (["--model", "vgg16"], "--model"),
    # resources the local runtime cannot give: the trials would wait for them forever
    (["--cpus-per-trial", "3", "--num-cpus", "2"], "--cpus-per-trial"),
    (["--cpus-per-trial", str(1000 * (os.cpu_count() or 1))], "--cpus-per-trial"),
    (["--gpus-per-trial", str(_gpus() + 1)], "--gpus-per-trial"),
    # a cluster, tracking server or storage that does not answer
    # ({port}: a free port, nothing listening; chosen when the test runs)
    (["--address", "127.0.0.1:{port}"], "--address"),
    (["--address", "ray://127.0.0.1:{port}"], "--address"),
    (["--mlflow-uri", "http://127.0.0.1:{port}"], "--mlflow-uri"),
    (["--storage", "s3://prune-platform-no-such-bucket/studies"], "--storage"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flag_fails_with_one_line_and_writes_nothing(argv, flag, tmp_path, capsys):
    assert_refused(main, [a.format(port=free_port()) for a in argv], flag, tmp_path, capsys)


def test_existing_study_folder_is_refused(tmp_path, capsys):
    (tmp_path / "s" / "taken").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path / "s"), "--name", "taken"])
    assert exc.value.code == 2 and "--name" in capsys.readouterr().err
    assert list((tmp_path / "s" / "taken").iterdir()) == []


def test_bad_flag_through_the_real_command(tmp_path, ray_env):
    r = run_cli(["--num-samples", "0", "--root", str(tmp_path / "s")], ray_env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--num-samples" in r.stderr
    assert not (tmp_path / "s").exists()


def test_summary_is_printed(finished_study):
    out = finished_study.out
    assert out.index("Verdicts") < out.index("Search: each regime at its own best learning rate")
    for condition in ("tuned", "fixed_small", "fixed_large"):
        assert condition in out.split("Verdicts")[1].split("Search:")[0]
    assert "Winning ticket's test-accuracy advantage over random re-init" in out
    for regime in REGIMES:
        assert f"{regime} {N}/{N} done" in out  # the progress view
    assert "Artifact sharing" in out


# The study's own lines before its summary: the header, the progress view, nothing else
OWN_LINE = re.compile(r"(Study \S+: .*|taking the study over from .*|folder /.*|MLflow: .*|Ray: .*|--- .*|\[ *\d+s\] .*|    \w+: tuned LR .*|"
                      r"    look \d+: \w+ \w+ vs \w+: .*|)$")


def test_first_screen_has_only_the_studys_own_lines(finished_study):
    """No other library's notices (MLflow's schema migration, Ray's token authentication, Tune's
    tables), with Ray's token authentication on as a user has it."""
    head = finished_study.out.split("Verdicts")[0].splitlines()
    assert head[0].startswith("Study tiny: ") and head[1].startswith("folder ")
    assert [ln for ln in head if not OWN_LINE.match(ln)] == []
    assert finished_study.err == ""
    home = finished_study.dir.parents[1] / "home"
    assert (home / ".ray" / "auth_token").is_file()  # authentication stayed on


def test_study_json_names_the_code(finished_study):
    import json
    import subprocess

    from tests.conftest import ROOT
    code = json.loads((finished_study.dir / "study.json").read_text())["code"]
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert code["commit"] == head.strip() and isinstance(code["dirty"], bool)
    else:  # an installed copy without its history (the Docker image)
        assert code is None


def test_confirmation_rows(finished_study):
    study_dir = finished_study.dir
    trials = pq.read_table(study_dir / "results" / "trials.parquet").to_pandas()
    conf = trials[trials.phase == "confirm"]
    assert len(conf) == N_CONFIRM and set(conf["status"]) == {"completed"}
    search = trials[trials.phase == "search"]
    assert not set(conf["seed"]) & set(search["seed"])  # fresh seeds the search never saw
    for regime in REGIMES:
        s = search[search.regime == regime]
        best_lr = s.loc[s["val_acc"].idxmax(), "lr"]
        tuned = conf[(conf.regime == regime) & (conf.condition == "tuned")]
        assert (tuned["lr"] == best_lr).all()
        for cond, lr in (("fixed_small", 0.01), ("fixed_large", 0.3)):
            rows = conf[(conf.regime == regime) & (conf.condition == cond)]
            assert len(rows) == K and (rows["lr"] == lr).all()
    sweep = conf[conf.prune_round < conf.rounds]
    assert set(sweep["regime"]) == {"winning_ticket", "random_reinit"} and set(sweep["condition"]) == {"tuned"}
    assert (sweep["achieved_sparsity"] < conf[conf.prune_round == conf.rounds]["achieved_sparsity"].min()).all()
    # paired design: at a fixed LR the two regimes of a seed share one mask
    fixed = conf[conf.condition == "fixed_small"].pivot(index="seed", columns="regime", values="mask_artifact")
    assert (fixed["winning_ticket"] == fixed["random_reinit"]).all()


def test_report_is_built(finished_study):
    study_dir = finished_study.dir
    md = (study_dir / "report" / "report.md").read_text()
    assert "verdict" in md.lower() and (study_dir / "report" / "report.html").stat().st_size > 0
    figures = list((study_dir / "report" / "figures").glob("*.png"))
    assert len(figures) >= 4 and all(f.stat().st_size > 0 for f in figures)


def test_parquet_tables(finished_study):
    study_dir = finished_study.dir
    trials = pq.read_table(study_dir / "results" / "trials.parquet").to_pandas()
    epochs = pq.read_table(study_dir / "results" / "epochs.parquet").to_pandas()
    assert len(trials) == N * len(REGIMES) + N_CONFIRM and trials["trial_id"].is_unique
    trials = trials[trials.phase == "search"]
    epochs = epochs[epochs.phase == "search"]
    assert sorted(trials["regime"].unique()) == sorted(REGIMES)
    assert set(trials["status"]) == {"completed"}
    assert (trials["achieved_sparsity"] - 0.8).abs().max() < 1e-3
    assert trials[["val_acc", "test_acc", "wall_seconds"]].notna().all().all()
    assert trials["mask_artifact"].notna().all() and trials["mlflow_run_id"].notna().all()
    # winning ticket and random re-init at the same LR share one IMP run (one mask artifact)
    wt = trials[trials.regime == "winning_ticket"].set_index("lr")["mask_artifact"]
    rr = trials[trials.regime == "random_reinit"].set_index("lr")["mask_artifact"]
    common = set(wt.index) & set(rr.index)
    assert common, "the shared TPE seed and LR grid should give common LRs"
    for lr in common:
        assert set(wt.loc[[lr]]) == set(rr.loc[[lr]])
    late = trials[trials.regime == "late_rewind"]
    assert late["rewind_epoch"].eq(1).all() and not set(late["mask_artifact"]) & set(wt)
    assert trials[trials.regime == "random_reinit"]["reinit_seed"].notna().all()
    # epochs: pretraining, one IMP round, final: 2 epochs each, per trial
    per_trial = epochs.groupby("trial_id")["stage"].value_counts().unstack()
    assert (per_trial[["pretrain", "imp_round_1", "final"]] == 2).all().all()
    final = epochs[epochs.stage == "final"].sort_values("epoch").groupby("trial_id").last()
    joined = trials.set_index("trial_id").join(final[["val_acc"]].rename(columns={"val_acc": "val_acc_epoch"}))
    assert (joined["val_acc"] == joined["val_acc_epoch"]).all()


def test_mlflow_runs(finished_study):
    from mlflow.tracking import MlflowClient
    study_dir = finished_study.dir
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("phase") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == N * len(REGIMES) + N_CONFIRM
    confirm = [c for c in children if c.data.tags["phase"] == "confirm"]
    assert len(confirm) == N_CONFIRM and {c.data.tags["condition"] for c in confirm} == {"tuned", "fixed_small", "fixed_large"}
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    for c in children:
        assert c.info.status == "FINISHED"
        assert {"regime", "lr", "seed", "sparsity", "model", "dataset"} <= set(c.data.params)
        assert {"final_val_acc", "final_test_acc", "achieved_sparsity", "val_acc", "pretrain/val_acc"} <= set(c.data.metrics)
        hist = client.get_metric_history(c.info.run_id, "val_acc")
        assert sorted(m.step for m in hist) == [1, 2]
        assert c.info.run_name.startswith(c.data.tags["regime"] + " lr=")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results", "report", "summary.txt", "study.json"} <= artifacts
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/figures"} <= report
    assert {"results/trials.parquet", "results/epochs.parquet"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "results")}


def test_optuna_storage(finished_study):
    import optuna
    study_dir = finished_study.dir
    trials = pq.read_table(study_dir / "results" / "trials.parquet").to_pandas()
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {f"tiny.{r}" for r in REGIMES}
    for regime in REGIMES:
        study = optuna.load_study(study_name=f"tiny.{regime}", storage=storage)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == N
        rows = trials[(trials.regime == regime) & (trials.phase == "search")].set_index("optuna_trial")
        for t in done:
            assert t.value == pytest.approx(rows.loc[t.number, "val_acc"])
            assert 10 ** t.params["log10_lr"] == pytest.approx(rows.loc[t.number, "lr"])


def test_a_diverging_study_goes_on(tmp_path, ray_env, data_dir):
    r = run_cli(["--num-samples", "2", "--regimes", "winning_ticket", "--epochs", "1", "--rounds", "1",
                 "--lr-min", "1000", "--lr-max", "10000", "--lr-grid", "1", "--root", str(tmp_path / "s"),
                 "--name", "div", "--data-dir", data_dir, "--num-cpus", "2", "--no-confirm"], ray_env)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = pq.read_table(tmp_path / "s" / "div" / "results" / "trials.parquet").to_pandas()
    assert len(trials) == 2 and trials["diverged"].all() and set(trials["status"]) == {"completed"}
    assert trials["val_acc"].between(0, 1).all() and "DIVERGED" in r.stdout
    assert set(trials["diverged_stage"]) == {"pretrain"}
    assert not any(math.isnan(v) for v in trials["val_acc"])


INJECT_FAILURE = """
import sys
if any(arg.endswith("default_worker.py") for arg in sys.argv):  # in Ray's trial workers only
    import trainables.training

    def fails(self, *args, **kwargs):
        raise ValueError("injected: this network cannot be trained")
    trainables.training.Trainer.__init__ = fails
"""


def test_a_deterministic_failure_stops_the_study(tmp_path, ray_env, data_dir):
    """Every trial fails with the same error (injected into Ray's workers by a sitecustomize module):
    the study stops after the first two, with that error in one line, instead of retrying each of its
    ten trials; the tables and MLflow hold what happened."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT_FAILURE)
    env = {**ray_env, "PYTHONPATH": f"{inject}:{ray_env['PYTHONPATH']}"}
    r = run_cli(["--num-samples", "10", "--regimes", "winning_ticket", "--epochs", "1", "--rounds", "1",
                 "--root", str(tmp_path / "s"), "--name", "broken", "--data-dir", data_dir, "--num-cpus", "2",
                 "--max-failures", "1"], env)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert said == ["error: the study stopped: winning_ticket: its first 2 trials failed with the same error: "
                    "ValueError: injected: this network cannot be trained"], r.stderr[-3000:]
    trials = pq.read_table(tmp_path / "s" / "broken" / "results" / "trials.parquet").to_pandas()
    assert 2 <= len(trials) < 10 and set(trials["status"]) == {"error"}, trials[["trial_id", "error"]]
    assert (trials["error"] == "ValueError: injected: this network cannot be trained").sum() >= 2


def test_confirmation_alone_on_a_finished_search(tmp_path, ray_env, data_dir, capsys):
    import subprocess
    import sys

    from study.confirm import main as confirm_main
    from tests.conftest import ROOT
    common = ["--epochs", "1", "--rounds", "1", "--lr-min", "0.01", "--lr-max", "0.3", "--lr-grid", "2",
              "--root", str(tmp_path / "s"), "--name", "later", "--data-dir", data_dir, "--num-cpus", "2",
              "--storage", str(tmp_path / "shared")]
    r = run_cli(["--num-samples", "2", "--no-confirm", *common], ray_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Verdicts" not in r.stdout
    study = tmp_path / "s" / "later"

    def confirm(*args):
        return subprocess.run([sys.executable, "-m", "study.confirm", *args], cwd=ROOT, env=ray_env,
                              capture_output=True, text=True, timeout=600)
    def refused(*args) -> str:  # refusals come before Ray or anything else starts: in this process
        with pytest.raises(SystemExit) as exc:
            confirm_main(list(args))
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        return err
    assert "study_dir" in refused(str(tmp_path))  # not a study folder
    assert "--confirm-seeds" in refused(str(study), "--confirm-seeds", "0")
    ok = confirm(str(study), "--confirm-seeds", "2", "--max-confirm-seeds", "2", "--candidates", "1", "--no-sweep")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "Verdicts" in ok.stdout
    trials = pq.read_table(study / "results" / "trials.parquet").to_pandas()
    assert (trials.phase == "search").sum() == 4 and (trials.phase == "confirm").sum() == 2 * 3 * 2
    shared = tmp_path / "shared" / "later"  # --storage: artifacts, trial records, Tune state
    assert {"artifacts", "trial-records", "ray"} <= {p.name for p in shared.iterdir()}
    assert not (study / "artifacts").exists() and not (study / "ray").exists()
    import json
    written = [json.loads(p.read_text())["records"] for p in (shared / "trial-records").glob("*.json")]
    assert sum(map(len, written)) == len(trials)  # a confirmation trial writes one record per seed
    assert "already" in refused(str(study))
