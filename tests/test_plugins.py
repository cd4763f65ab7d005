"""A regime and a pruning method from outside the packages: one function and one registry call
each, in a module the study imports with --plugins; they run through the real CLI in a tiny study
and appear in the tables, in MLflow and in the report."""
from __future__ import annotations

import json
import textwrap

import pyarrow.parquet as pq
import pytest

from tests.conftest import assert_refused, run_cli

PLUGIN = '''
"""A third party's additions: the winning ticket with its signs flipped, and a layer-normalised magnitude."""
from trainables.methods import PruningMethod, register_method
from trainables.regimes import Regime, register_regime
from trainables.starts import on_imp_mask


def flipped_ticket(pipeline, lr, seed, prune_round):
    """-theta_0 * m: the winning ticket's mask, the signs of its initial weights flipped."""
    imp = pipeline.imp(lr, seed)
    return on_imp_mask(imp, lambda imp: ({k: -v for k, v in imp.theta0.tensors().items()}, {}), None, prune_round)


register_regime(Regime("flipped_ticket", flipped_ticket, "flipped ticket", "-theta_0 * m", needs="mask",
                       versus=("winning_ticket",)))


def layer_normalised(weight):
    """|w| over the layer's mean |w|: each layer's weights ranked against their own scale."""
    return weight.abs() / weight.abs().mean()


register_method(PruningMethod("layer-normalised", layer_normalised, structured=False, allocation="scope",
                              help="|w| / mean |w| of its layer"))
'''


@pytest.fixture
def plugin_env(tmp_path, ray_env):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "my_plugin.py").write_text(textwrap.dedent(PLUGIN))
    return {**ray_env, "PYTHONPATH": f"{folder}:{ray_env['PYTHONPATH']}"}


def test_a_regime_and_a_method_registered_outside_run_through_the_study(tmp_path, plugin_env, data_dir):
    from mlflow.tracking import MlflowClient
    root = tmp_path / "s"
    r = run_cli(["--plugins", "my_plugin", "--regimes", "winning_ticket,flipped_ticket",
                 "--method", "layer-normalised", "--num-samples", "2", "--startup-trials", "1", "--epochs", "1",
                 "--rounds", "1", "--lr-min", "0.03", "--lr-max", "0.3", "--lr-grid", "2", "--confirm-seeds", "2", "--max-confirm-seeds", "2",
                 "--no-fixed", "--no-sweep", "--root", str(root), "--name", "plug", "--data-dir", data_dir,
                 "--num-cpus", "2"], plugin_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = root / "plug"
    trials = pq.read_table(study / "results" / "trials.parquet").to_pandas()
    assert set(trials.regime) == {"winning_ticket", "flipped_ticket"} and set(trials.status) == {"completed"}
    assert set(trials.method) == {"layer-normalised"} and len(trials) == 2 * 2 + 2 * 2
    flipped, ticket = (trials[(trials.regime == r) & (trials.phase == "confirm")].set_index("seed")
                       for r in ("flipped_ticket", "winning_ticket"))
    assert (flipped.mask_artifact == ticket.mask_artifact).all()  # one IMP run per LR and seed, shared
    info = json.loads((study / "study.json").read_text())
    assert info["contrasts"] == [["flipped_ticket", "winning_ticket"]]
    assert info["config"]["execution"]["plugins"] == ["my_plugin"]
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("plug").experiment_id], max_results=100)
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId")]
    assert {x.data.tags["regime"] for x in children} == {"winning_ticket", "flipped_ticket"}
    assert {x.data.params["method"] for x in children} == {"layer-normalised"}
    report = (study / "report" / "report.md").read_text()
    assert "flipped ticket" in report and "flipped_ticket" in r.stdout  # its label, and the verdict


def test_a_plugin_that_does_not_import_is_refused(tmp_path, capsys):
    from study.lottery import main
    assert_refused(main, ["--plugins", "no_such_plugin_module"], "--plugins", tmp_path, capsys)
    # without the plugin, its regime and method are unknown names, refused as such
    assert_refused(main, ["--regimes", "flipped_ticket"], "--regimes", tmp_path, capsys)
    assert_refused(main, ["--method", "layer-normalised"], "--method", tmp_path, capsys)
