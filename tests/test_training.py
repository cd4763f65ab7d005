"""The training loop: masks hold at every step, schedules, divergence, data batching."""
from __future__ import annotations

import math

import pytest
import torch

from trainables.data import load_splits
from trainables.models import build_model, init_weights
from trainables.pruning import full_masks, prune_round
from trainables.training import Trainer, TrainSpec, lr_factor


@pytest.fixture
def splits(data_dir):
    return load_splits("mnist1d", data_dir, 42, 0.2, 42)


def _masks_at(model, sparsity_per_layer=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(m.shape, generator=g) > sparsity_per_layer).float()
            for n, m in full_masks(model).items()}


def test_pruned_weights_are_exactly_zero_after_every_step(splits):
    torch.manual_seed(0)
    model = init_weights(build_model("mlp", splits.input_shape, 10), 0)
    masks = _masks_at(model)
    trainer = Trainer(model, splits, TrainSpec(lr=0.1, epochs=2, momentum=0.9, weight_decay=5e-4), masks)
    params = dict(model.named_parameters())
    checked = []

    def check(optimizer, args, kwargs):  # registered after the trainer's own post-hook: runs after it
        for n, m in masks.items():
            assert torch.all(params[n][m == 0] == 0), f"{n} has revived weights"
        checked.append(1)
    trainer.optimizer.register_step_post_hook(check)
    history = trainer.run()
    assert len(checked) == 2 * trainer.steps_per_epoch
    assert len(history) == 2 and not history[-1]["diverged"]
    # momentum did build up (so it would revive pruned weights if the mask were not re-applied)
    state = trainer.optimizer.state[params["net.1.weight"]]["momentum_buffer"]
    assert state.abs().sum() > 0
    for n, m in masks.items():
        assert int((params[n] != 0).sum()) == int(m.sum())


def test_unmasked_training_learns(splits):
    model = init_weights(build_model("mlp", splits.input_shape, 10), 1)
    history = Trainer(model, splits, TrainSpec(lr=0.1, epochs=3)).run()
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["val_acc"] > 0.3  # chance is 0.1
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_conv1d_trains(splits):
    model = init_weights(build_model("conv1d", splits.input_shape, 10, (8, 8)), 0)
    masks = prune_round(model, full_masks(model), 0.5)
    history = Trainer(model, splits, TrainSpec(lr=0.05, epochs=1), masks).run()
    assert history[-1]["val_acc"] > 0.1


def test_divergence_stops_the_run_and_reports_accuracy_as_is(splits):
    model = init_weights(build_model("mlp", splits.input_shape, 10), 0)
    history = Trainer(model, splits, TrainSpec(lr=1e4, epochs=5, momentum=0.9)).run()
    assert history[-1]["diverged"] and len(history) < 5
    assert not math.isfinite(history[-1]["train_loss"])
    assert 0.0 <= history[-1]["val_acc"] <= 1.0


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    spec = TrainSpec(lr=0.1, epochs=8, schedule="step")
    f = [lr_factor(s, 10, spec) for s in range(80)]
    assert f[0] == 1.0 and f[39] == 1.0 and f[40] == pytest.approx(0.1)
    assert f[59] == pytest.approx(0.1) and f[60] == pytest.approx(0.01) and f[79] == pytest.approx(0.01)


def test_cosine_with_warmup():
    spec = TrainSpec(lr=0.1, epochs=10, schedule="cosine", warmup_epochs=2)
    f = [lr_factor(s, 5, spec) for s in range(50)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert f[10] == pytest.approx(1.0) and f[-1] < 0.01
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_resume_continues_bit_for_bit(splits):
    spec = TrainSpec(lr=0.05, epochs=3)
    a = init_weights(build_model("mlp", splits.input_shape, 10), 3)
    masks = _masks_at(a, 0.5)
    full = Trainer(a, splits, spec, masks).run()
    b = init_weights(build_model("mlp", splits.input_shape, 10), 3)
    t1 = Trainer(b, splits, spec, masks)
    t1.run(stop_epoch=1)
    state = t1.state()
    c = init_weights(build_model("mlp", splits.input_shape, 10), 99)
    t2 = Trainer(c, splits, spec, masks)
    t2.load_state(state)
    rest = t2.run()
    assert [r["epoch"] for r in rest] == [2, 3]
    assert rest[-1]["val_acc"] == full[-1]["val_acc"]
    for (n, p), q in zip(a.named_parameters(), c.parameters()):
        assert torch.equal(p, q), n


def test_data_is_deterministic_with_a_disjoint_validation_split(data_dir):
    a = load_splits("mnist1d", data_dir, 42, 0.2, 42)
    load_splits.cache_clear()
    b = load_splits("mnist1d", data_dir, 42, 0.2, 42)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert len(a.y_train) == 3200 and len(a.y_val) == 800 and len(a.y_test) == 1000
    train_rows = {tuple(r.tolist()) for r in a.x_train}
    assert not any(tuple(r.tolist()) in train_rows for r in a.x_val)
