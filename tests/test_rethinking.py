"""The rethinking regimes on a real pipeline, and ``python -m study.rethinking`` end to end.

fine_tune starts from the weights it inherited, scratch_e / scratch_b from a fresh draw on the same
pruned network, scratch_b for the epochs its FLOPs buy, random_prune from theta_0 with the same
per-layer survivors; structured pruning really makes the network smaller and it still trains.
"""
from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import ROOT, assert_refused
from trainables import efficiency as eff
from trainables.artifacts import ArtifactStore
from trainables.config import PipelineConfig
from trainables.pipeline import Pipeline
from trainables.regimes import REGIMES
from trainables.starts import pruned_network, scratch_b_epochs
from trainables.structured import channel_counts
from trainables.training import Trainer


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pipeline(tmp_path, data_dir, **kw) -> Pipeline:
    cfg = PipelineConfig().updated(data_dir=data_dir, model="conv1d", epochs=2, lr_coupling="retrain", rounds=1,
                                   method="l1-filter", prune_ratio=0.5, **kw)
    return Pipeline(cfg, ArtifactStore(str(tmp_path / "artifacts")))


def start(p: Pipeline, regime: str, lr: float = 0.05, seed: int = 0):
    return REGIMES[regime].make_start(p, lr, seed, p.cfg.pruning.rounds)


def test_scratch_b_budget():
    assert scratch_b_epochs(10, 4e6, 1e6, cap=2.0) == 20  # 4x fewer FLOPs, capped at 2x
    assert scratch_b_epochs(10, 1.5e6, 1e6, cap=2.0) == 15
    assert scratch_b_epochs(10, 1e6, 1e6, cap=2.0) == 10
    assert scratch_b_epochs(20, 3e6, 2e6, cap=5.0) == 30


def test_structured_regimes_share_one_smaller_network(tmp_path, data_dir):
    p = pipeline(tmp_path, data_dir)
    dense = p.new_model()
    pr = pruned_network(p, 0.05, 0)
    pruned = p.restore(pr.arch)
    x = p.splits.x_val[:7]
    assert pruned(x).shape == dense(x).shape == (7, 10)
    assert eff.count_params(pruned) < 0.5 * eff.count_params(dense)  # half the channels of every conv
    counts, dense_counts = channel_counts(pruned), channel_counts(dense)
    assert all(counts[n] == dense_counts[n] // 2 for n in ("features.0", "features.2", "features.4"))

    ft, se, sb = start(p, "fine_tune"), start(p, "scratch_e"), start(p, "scratch_b")
    # fine_tune inherits theta_E's surviving weights: exactly the pruned network's
    for k, v in pr.arch.tensors().items():
        assert torch.equal(ft.model.state_dict()[k], v), k
    assert ft.train == {"epochs": 2, "schedule": "constant", "warmup_epochs": 0}
    # scratch_e and scratch_b: the same fresh, seeded draw on the same architecture
    assert channel_counts(se.model) == counts and channel_counts(sb.model) == counts
    w = "features.0.weight"
    assert torch.equal(se.model.state_dict()[w], sb.model.state_dict()[w])
    assert not torch.equal(se.model.state_dict()[w], ft.model.state_dict()[w])
    assert torch.equal(start(p, "scratch_e").model.state_dict()[w], se.model.state_dict()[w])  # reproducible
    assert se.seeds["reinit_seed"] != 0
    # scratch_b's epochs from the FLOPs of the dense and the pruned network, counted on them
    dense_flops, pruned_flops = eff.count_flops(dense, p.splits.input_shape), eff.count_flops(pruned, p.splits.input_shape)
    assert sb.efficiency["dense_flops"] == dense_flops and sb.efficiency["flops"] == pruned_flops
    assert sb.train["epochs"] == max(2, round(2 * min(2.0, dense_flops / pruned_flops))) == 4
    assert se.train == {} and sb.efficiency["latency_ms"] > 0 and sb.efficiency["dense_latency_ms"] > 0


def test_random_prune_keeps_the_counts_not_the_channels(tmp_path, data_dir):
    p = pipeline(tmp_path, data_dir)
    pr = pruned_network(p, 0.05, 0)
    rp = start(p, "random_prune")
    assert channel_counts(rp.model) == channel_counts(p.restore(pr.arch))
    # from theta_0: the kept filters of the first conv are rows of theta_0's
    theta0 = pr.theta0.tensors()["features.0.weight"]
    kept = rp.model.state_dict()["features.0.weight"]
    assert all(any(torch.equal(row, t) for t in theta0) for row in kept)
    assert rp.seeds["random_prune_seed"] != start(p, "random_prune", seed=1).seeds["random_prune_seed"]


def test_layer_ratios_and_the_random_control_follow_them(tmp_path, data_dir):
    p = pipeline(tmp_path, data_dir, layer_ratios=(("features.0", 0.25), ("features.2", 0.0)))
    counts = channel_counts(p.restore(pruned_network(p, 0.05, 0).arch))
    assert (counts["features.0"], counts["features.2"], counts["features.4"]) == (24, 32, 16)
    random_counts = channel_counts(start(p, "random_prune").model)
    assert random_counts == counts  # a layer the method left whole stays whole in the control


def test_magnitude_rethinking_regimes_on_masks(tmp_path, data_dir):
    p = pipeline(tmp_path, data_dir, sparsity=0.75)
    p = Pipeline(p.cfg.updated(method="magnitude"), p.store)
    pr = pruned_network(p, 0.05, 0)
    ft, sb, rp = start(p, "fine_tune"), start(p, "scratch_b"), start(p, "random_prune")
    trained = pr.trained.tensors()
    assert all(torch.equal(ft.weights[k], v) for k, v in trained.items())  # theta_E, masked in training
    assert ft.masks is not None and math.isclose(ft.sparsity[0], 0.75, abs_tol=0.01)
    # masked FLOPs: each layer's FLOPs scaled by its density (global pruning spares the convs a little)
    ratio = sb.efficiency["dense_flops"] / sb.efficiency["flops"]
    assert 2.0 < ratio < 4.5 and sb.train["epochs"] == 4  # capped at 2x
    assert sb.efficiency["latency_ms"] == sb.efficiency["dense_latency_ms"]  # zeros in dense kernels: no faster
    for name, m in rp.masks.items():  # the same number of survivors per layer, elsewhere
        assert m.sum() == ft.masks[name].sum() and not torch.equal(m, ft.masks[name])


def test_slimming_pretrains_with_the_penalty_and_prunes_globally(tmp_path):
    from trainables.data import Splits
    from trainables.models import build_model, init_weights
    from trainables.structured import StructuredSpec, prune_structured
    from trainables.training import TrainSpec
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 3, 16, 16, generator=g), torch.randint(0, 10, (256,), generator=g)
    splits = Splits(x, y, x[:32], y[:32], x[:32], y[:32], 10)
    gammas = {}
    for bn_l1 in (0.0, 1e-2):
        model = init_weights(build_model("vgg11", (3, 16, 16), 10), 0)
        Trainer(model, splits, TrainSpec(lr=0.05, epochs=2, batch_size=64, bn_l1=bn_l1)).run()
        gammas[bn_l1] = torch.cat([m.weight.abs() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert gammas[1e-2].mean() < gammas[0.0].mean()  # the penalty shrinks the scales
    pruned = prune_structured(model, StructuredSpec("slimming", ratio=0.5), x[:1])
    assert eff.count_params(pruned) < eff.count_params(model)
    Trainer(pruned, splits, TrainSpec(lr=0.05, epochs=1, batch_size=64)).run()  # and it still trains


BAD = [
    (["--method", "slimming"], "--method"),  # conv1d has no BatchNorm
    (["--method", "pruning-by-hope"], "--method"),
    (["--preset", "vgg16-a"], "--preset"),  # for vgg16, not conv1d
    (["--rounds", "3"], "--rounds"),
    (["--prune-ratio", "1.0"], "--prune-ratio"),
    (["--regimes", "winning_ticket,scratch_e"], "--regimes"),
    (["--fine-tune-lr-min", "0.5", "--fine-tune-lr-max", "0.1"], "--fine-tune-lr-max"),
    (["--scratch-b-cap", "0.5"], "--scratch-b-cap"),
    (["--layer-ratios", "features.0=0.3,classifier=0.5"], "--layer-ratios"),
    (["--layer-ratios", "features.0=1.5"], "--layer-ratios"),
    (["--method", "magnitude", "--layer-ratios", "features.0=0.3"], "--layer-ratios"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_fail_with_one_line(argv, flag, tmp_path, capsys):
    from study.rethinking import main
    assert_refused(main, argv, flag, tmp_path, capsys)


def test_rethinking_cli_end_to_end(tmp_path, ray_env, data_dir):
    import json
    import subprocess
    import sys
    args = ["--num-samples", "2", "--startup-trials", "2", "--epochs", "2", "--lr-grid", "2",
            "--confirm-seeds", "2", "--max-confirm-seeds", "2", "--candidates", "1", "--root", str(tmp_path / "s"), "--name", "rt", "--data-dir", data_dir,
            "--num-cpus", "2"]
    r = subprocess.run([sys.executable, "-m", "study.rethinking", *args], cwd=ROOT, env=ray_env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = tmp_path / "s" / "rt"
    info = json.loads((study / "study.json").read_text())
    assert info["study_kind"] == "rethinking" and info["contrasts"] == [["scratch_e", "fine_tune"], ["scratch_b", "fine_tune"]]
    trials = pq.read_table(study / "results" / "trials.parquet").to_pandas()
    search, confirm = trials[trials.phase == "search"], trials[trials.phase == "confirm"]
    assert sorted(search.regime.unique()) == ["fine_tune", "scratch_b", "scratch_e"] and len(search) == 6
    assert set(confirm.condition) == {"tuned"} and len(confirm) == 3 * 2
    # each regime searched its own range: fine-tuning below 0.1, training from scratch from 0.01 up
    assert search[search.regime == "fine_tune"].lr.max() <= 0.1 + 1e-9
    assert search[search.regime != "fine_tune"].lr.min() >= 0.01 - 1e-9
    assert set(trials.method) == {"l1-filter"}
    epochs = trials.groupby("regime").train_epochs.first()
    assert epochs["fine_tune"] == 2 and epochs["scratch_e"] == 2 and epochs["scratch_b"] == 4
    assert (trials.params < trials.dense_params).all() and (trials.flops < trials.dense_flops).all()
    assert (trials.latency_ms > 0).all() and trials.status.eq("completed").all()
    out = r.stdout
    assert "Verdicts" in out and "Scratch-B" in out and "fine-tune" in out
    report = (study / "report" / "report.md").read_text()
    assert "Scratch-E" in report and "winning" not in report.lower()


def test_missing_image_data_fails_before_any_folder(tmp_path, capsys, monkeypatch):
    import socket

    from study.rethinking import main

    def offline(*args, **kwargs):
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, "connect", offline)  # offline even where a network is
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(SystemExit) as exc:
        main(["--dataset", "cifar10", "--model", "vgg11", "--root", str(tmp_path / "s"),
              "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "--data-dir" in err and "cifar-10-batches-py" in err and str(tmp_path / "d") in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


def test_rethinking_on_real_fashion_mnist(tmp_path, ray_env):
    """The CLI on the real Fashion-MNIST (Debian's dataset-fashion-mnist), LeNet-300-100 with half
    its hidden neurons removed, on a 2,000-example training subset."""
    import subprocess
    import sys

    data = tmp_path / "data"  # empty: the study unpacks Debian's files into it by itself
    args = ["--dataset", "fashion_mnist", "--model", "lenet300", "--train-subset", "2000", "--batch-size", "100",
            "--num-samples", "2", "--startup-trials", "2", "--epochs", "2", "--lr-grid", "2", "--confirm-seeds", "2", "--max-confirm-seeds", "2", "--candidates", "1",
            "--root", str(tmp_path / "s"), "--name", "fm", "--data-dir", str(data), "--num-cpus", "2"]
    r = subprocess.run([sys.executable, "-m", "study.rethinking", *args], cwd=ROOT, env=ray_env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    trials = pq.read_table(tmp_path / "s" / "fm" / "results" / "trials.parquet").to_pandas()
    assert len(trials) == 3 * 2 + 3 * 2 and trials.status.eq("completed").all()
    assert (trials.dense_params == 266_610).all()  # LeNet-300-100 on 28x28, 10 classes
    assert (trials.params < 0.55 * trials.dense_params).all()  # 150 and 50 hidden neurons left
    best = trials[trials.phase == "confirm"].groupby("regime").test_acc.mean()
    assert (best > 0.6).all(), best  # real images, learnt: chance is 0.1
    assert "Verdicts" in r.stdout
    said = f"fashion_mnist: not in {data / 'FashionMNIST' / 'raw'}; unpacked there from Debian's dataset-fashion-mnist"
    assert r.stdout.splitlines()[0].startswith(said), r.stdout[:500]


def test_train_subset_trains_on_the_first_n_of_the_split(tmp_path, data_dir):
    full, sub = pipeline(tmp_path, data_dir), pipeline(tmp_path, data_dir, train_subset=500)
    assert len(sub.splits.y_train) == 500 and torch.equal(sub.splits.x_train, full.splits.x_train[:500])
    assert torch.equal(sub.splits.x_val, full.splits.x_val)  # validation and test untouched
    assert sub.init(0).name != full.init(0).name  # a different data set names different artifacts
