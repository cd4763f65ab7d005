"""Stacked training matches training the seeds one after another (weights and accuracies, to float
tolerance), with per-network data order, masks and divergence."""
from __future__ import annotations

import copy

import pytest
import torch

from trainables.data import load_splits
from trainables.models import build_model, init_weights
from trainables.pruning import random_masks_like
from trainables.stacked import StackedTrainer, stackable, stacking_pays
from trainables.training import Trainer, TrainSpec


@pytest.fixture
def splits(data_dir):
    torch.set_num_threads(1)
    return load_splits("mnist1d", data_dir, 42, 0.2, 42)


def _nets(name: str, seeds, splits):
    return [init_weights(build_model(name, splits.input_shape, splits.num_classes, None), s) for s in seeds]


@pytest.mark.parametrize("name,masked", [("mlp", True), ("conv1d", False)])
def test_stacked_equals_one_after_another(name, masked, splits):
    """A few steps both ways: 2 epochs of 10 steps (batched and separate products round differently,
    by how their buffers happen to be aligned too, and training grows the difference with every
    step, so long runs agree in distribution, not to the digit)."""
    examples = 640
    from dataclasses import replace
    splits = replace(splits, x_train=splits.x_train[:examples], y_train=splits.y_train[:examples])
    seeds = (3, 4, 5)
    specs = [TrainSpec(lr=0.05, epochs=2, batch_size=64, seed=s) for s in seeds]
    nets = _nets(name, seeds, splits)
    masks = None
    if masked:
        full = {f"{n}": torch.ones_like(p) for n, p in nets[0].named_parameters() if n.endswith("weight")}
        masks = [random_masks_like({n: m * 1 for n, m in full.items()}, s) for s in seeds]
        for m in masks:  # keep half of each layer
            for n in m:
                m[n] = (torch.rand_like(m[n]) < 0.5).float()
    alone = []
    for k, net in enumerate(copy.deepcopy(nets)):
        history = Trainer(net, splits, specs[k], masks[k] if masks else None).run()
        alone.append((net, history))
    together = StackedTrainer(nets, splits, specs, masks)
    histories = together.run()
    for k, (net, history) in enumerate(alone):
        for (n, a), b in zip(net.state_dict().items(), nets[k].state_dict().values()):
            assert torch.allclose(a, b, atol=2e-5, rtol=1e-4), (k, n, (a - b).abs().max())
        for h_alone, h_stacked in zip(history, histories[k]):
            assert h_stacked["train_loss"] == pytest.approx(h_alone["train_loss"], rel=1e-4)
            for key in ("val_acc", "test_acc"):  # at most one example may flip at float tolerance
                assert abs(h_stacked[key] - h_alone[key]) <= 1.5 / len(splits.y_val)
        if masks:
            for n, m in masks[k].items():
                assert torch.all(nets[k].state_dict()[n][m == 0] == 0)  # pruned weights exactly zero


def test_a_diverged_network_stops_counting_and_the_others_go_on(splits):
    seeds = (1, 2)
    specs = [TrainSpec(lr=0.05, epochs=2, seed=s) for s in seeds]
    nets = _nets("mlp", seeds, splits)
    alone = copy.deepcopy(nets[1])
    with torch.no_grad():
        next(nets[0].parameters()).fill_(float("nan"))
    histories = StackedTrainer(nets, splits, specs).run()
    assert len(histories[0]) == 1 and histories[0][0]["diverged"]
    reference = Trainer(alone, splits, specs[1]).run()
    assert [h["val_acc"] for h in histories[1]] == pytest.approx([h["val_acc"] for h in reference], abs=1.5e-3)


def test_what_cannot_be_stacked_is_refused(splits):
    mlp = _nets("mlp", (1,), splits)[0]
    wide = build_model("mlp", splits.input_shape, splits.num_classes, (50,))
    assert stackable([mlp, copy.deepcopy(mlp)]) and not stackable([mlp, wide])
    vgg = build_model("vgg11", (3, 32, 32), 10, None)
    narrow = build_model("vgg11", (3, 32, 32), 10, (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M"))
    assert stackable([vgg, copy.deepcopy(vgg)]) and not stackable([vgg, narrow])  # slimming's channel counts
    assert stacking_pays([mlp]) and not stacking_pays([vgg])  # measured: 2-D convolutions train one by one
    with pytest.raises(ValueError, match="seed"):
        StackedTrainer([mlp, copy.deepcopy(mlp)], splits, [TrainSpec(lr=0.1, epochs=1), TrainSpec(lr=0.2, epochs=1)])


def test_the_mlp_path_computes_what_vmap_computes(splits):
    nets = _nets("mlp", (1, 2, 3), splits)
    t = StackedTrainer(nets, splits, [TrainSpec(lr=0.05, epochs=1, seed=s) for s in (1, 2, 3)])
    x = splits.x_train[:64].expand(3, 64, *splits.x_train.shape[1:])
    plan, t.plan = t.plan, None
    by_vmap = t._forward(x)
    t.plan = plan
    assert plan is not None and torch.allclose(t._forward(x), by_vmap, atol=1e-6)


def test_imp_of_several_seeds_trains_them_together_into_the_same_artifacts(tmp_path, data_dir):
    """``Pipeline.imp_many``: each stage's trainings of 3 seeds stacked, stored under the keys one
    seed at a time uses (so ``imp`` of each seed then finds them all), with the same masks and
    histories to float tolerance; a concurrent ``imp`` of one seed would wait and load them."""
    from trainables.artifacts import ArtifactStore
    from trainables.config import DataConfig, PipelineConfig, PruningConfig, TrainingConfig
    from trainables.pipeline import Pipeline
    torch.set_num_threads(1)
    cfg = PipelineConfig(data=DataConfig(data_dir=data_dir, train_subset=640),
                         training=TrainingConfig(epochs=2), pruning=PruningConfig(rounds=2))
    seeds = [3, 4, 5]
    together = Pipeline(cfg, ArtifactStore(tmp_path / "together"))
    many = together.imp_many(0.05, seeds, rewind_epoch=1)
    trained = sorted(p.name for p in (tmp_path / "together").glob("train-*"))
    assert len(trained) == 3 * 3  # pretraining, its first epoch (the rewind point), IMP round 1: per seed
    for stage in range(2):  # stacked: each epoch's time is the stack's, shared by its networks
        assert len({res.stages[stage].history[0]["seconds"] for res in many}) == 1
    for seed, res in zip(seeds, many):
        again = together.imp(0.05, seed, rewind_epoch=1)  # finds every stage in the store: trains nothing
        assert [a.name for a in again.masks] == [a.name for a in res.masks] and len(res.masks) == 2
        assert not any(a.computed for a in (again.pretrained, again.rewind, *again.trained, *again.masks))
        alone = Pipeline(cfg, ArtifactStore(tmp_path / f"alone-{seed}")).imp(0.05, seed, rewind_epoch=1)
        assert [a.name for a in alone.masks] == [a.name for a in res.masks]  # the same keys, so the same names
        for a, b in zip(alone.masks, res.masks):
            ma, mb = a.tensors(), b.tensors()
            assert all((ma[n] != mb[n]).float().mean() < 0.002 for n in ma)  # ties at the threshold may flip
        for sa, sb in zip(alone.stages, res.stages):
            for ea, eb in zip(sa.history, sb.history):
                assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "together").glob("train-*")) == trained


@pytest.mark.parametrize("name,bn_l1", [("vgg11", 1e-4), ("resnet20", 0.0)])
def test_batchnorm_networks_stack_with_their_own_running_statistics(name, bn_l1):
    """VGG and ResNet (BatchNorm) on CIFAR-shaped data with crop-and-flip augmentation and, for VGG,
    network slimming's L1 penalty on the BN scales: 2 epochs of 2 steps both ways, the same
    weights, running statistics and accuracies to float tolerance (batched convolutions round
    differently, and a deep layer's variance over a few values amplifies it)."""
    from trainables.data import Splits
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    splits = Splits(x, y, x[:32], y[:32], x[32:], y[32:], 10, augment="crop_flip")
    seeds = (1, 2)
    specs = [TrainSpec(lr=0.01, epochs=2, batch_size=32, seed=s, bn_l1=bn_l1) for s in seeds]
    nets = [init_weights(build_model(name, (3, 32, 32), 10, None), s) for s in seeds]
    alone = []
    for net, spec in zip(copy.deepcopy(nets), specs):
        alone.append((net, Trainer(net, splits, spec).run()))
    histories = StackedTrainer(nets, splits, specs).run()
    for k, (net, history) in enumerate(alone):
        mine = nets[k].state_dict()
        for n, a in net.state_dict().items():
            if n.endswith("num_batches_tracked"):
                assert int(mine[n]) == int(a) == 4  # training steps only: evaluation leaves them alone
            else:  # weights tight; running statistics looser
                tol = dict(atol=1e-4, rtol=1e-3) if n in dict(net.named_parameters()) else dict(atol=1e-3, rtol=1e-2)
                assert torch.allclose(a, mine[n], **tol), (k, n, (a - mine[n]).abs().max())
        for h_alone, h_stacked in zip(history, histories[k]):
            assert h_stacked["train_loss"] == pytest.approx(h_alone["train_loss"], rel=1e-4)
            for key in ("val_acc", "test_acc"):
                assert abs(h_stacked[key] - h_alone[key]) <= 1.5 / 32
