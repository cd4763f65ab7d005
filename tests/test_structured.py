"""Structured (channel) pruning: physically smaller nets, the right channels, published presets."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables import methods
from trainables.efficiency import count_macs, count_params
from trainables.methods import METHODS, PruningMethod, register_method
from trainables.models import build_model, init_weights
from trainables.structured import (
    PRESETS,
    StructuredSpec,
    allocate,
    bn_l1_penalty,
    channel_counts,
    prunable_convs,
    prune_structured,
    pruned_state,
    reinitialise,
    restore_pruned,
    slimming_hook,
)

CIFAR = (3, 32, 32)


def _x(shape=CIFAR, n=4, seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


class SmallNet(nn.Module):
    """conv-BN-ReLU x3, global pool, linear: a plain net small enough to set weights by hand."""

    def __init__(self, widths=(6, 8, 10)):
        super().__init__()
        layers, c = [], 1
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def _small(seed=0, widths=(6, 8, 10)):
    torch.manual_seed(seed)
    return SmallNet(widths)


SMALL_X = _x((1, 8, 8))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are small: on a busy 2-core machine, two intra-op threads spin against each
    other (measured: the module took 55 s with 2 threads, 14 s with 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vgg16():
    return build_model("vgg16", CIFAR, 10)


@pytest.fixture(scope="module")
def resnet56():
    return build_model("resnet56", CIFAR, 10)


# ------------------------------------------------------------------ sizes, shapes, no mutation

def test_vgg16_half_filters_quarter_params(vgg16):
    before = {k: v.clone() for k, v in vgg16.state_dict().items()}
    vgg16.train()
    pruned = prune_structured(vgg16, StructuredSpec("l1-filter", 0.5), _x())
    dense, small = count_params(vgg16), count_params(pruned)
    # 15.0M -> 3.82M (the fc512 head of Li et al.'s VGG-16 keeps its 512 hidden units, so a bit
    # over the 3.75M of a one-Linear head): every conv weight has half its in- and out-channels.
    assert 14.9e6 < dense < 15.1e6
    assert 0.24 < small / dense < 0.27
    convs = [n for n, m in vgg16.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(channel_counts(pruned)[n] == channel_counts(vgg16)[n] // 2 for n in convs)
    assert pruned(_x()).shape == (4, 10)
    assert count_macs(pruned, CIFAR) < 0.26 * count_macs(vgg16, CIFAR)
    # the argument is untouched, flags included; the pruned copy keeps the train flag
    assert all(torch.equal(before[k], v) for k, v in vgg16.state_dict().items())
    assert vgg16.training and all(m.training for m in vgg16.modules())
    assert pruned.training and all(m.training for m in pruned.modules())
    # the widths attribute rebuilds the pruned architecture
    rebuilt = build_model("vgg16", CIFAR, 10, pruned.widths)
    assert [t.shape for t in rebuilt.state_dict().values()] == [t.shape for t in pruned.state_dict().values()]


def test_ratio_zero_is_identity_and_tracing_leaves_bn_stats(resnet56):
    model = copy.deepcopy(resnet56).train()
    same = prune_structured(model, StructuredSpec("l1-filter", 0.0), _x())
    for k, v in model.state_dict().items():  # tracing ran a forward: running stats must not move
        assert torch.equal(v, same.state_dict()[k]), k
    model.eval(), same.eval()
    assert torch.equal(model(_x()), same(_x()))


def test_prunable_layers_per_family(resnet56, vgg16):
    assert prunable_convs(resnet56) == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(9)]
    assert prunable_convs(vgg16) == [c for c, _ in vgg16.conv_bn_pairs]  # not the fc512 head
    assert prunable_convs(build_model("lenet300", (40,), 10)) == ["net.1", "net.3"]
    assert prunable_convs(build_model("conv4", CIFAR, 10)) == ["features.0", "features.2",
                                                               "features.5", "features.7"]


def test_resnet56_block_internal_pruning(resnet56):
    pruned = prune_structured(resnet56, StructuredSpec("l1-filter", 0.5), _x())
    before, after = channel_counts(resnet56), channel_counts(pruned)
    for name, n in before.items():
        assert after[name] == (n // 2 if name.endswith(".conv1") and name != "conv1" else n), name
    assert pruned.layer2[3].conv2.in_channels == 16
    assert pruned(_x()).shape == (4, 10)
    assert 0.49 < count_params(pruned) / count_params(resnet56) < 0.52
    assert pruned.widths[:3] == (16, 32, 64) and pruned.widths[3:] == (8,) * 9 + (16,) * 9 + (32,) * 9


def test_mlp_neurons(tmp_path):
    model = build_model("lenet300", (40,), 10)
    pruned = prune_structured(model, StructuredSpec("l1-filter", 0.5), _x((40,)))
    assert [m.out_features for m in pruned.modules() if isinstance(m, nn.Linear)] == [150, 50, 10]
    assert pruned(_x((40,))).shape == (4, 10)


def test_exact_removal_of_dead_channels_keeps_the_function(resnet56):
    """Channels whose BN gamma and beta are 0 output exactly 0 after the ReLU: removing them
    physically (and the matching input slices downstream) must not change the eval output."""
    model = copy.deepcopy(resnet56).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        for b in ("layer1.0", "layer2.4", "layer3.8"):
            bn = model.get_submodule(f"{b}.bn1")
            bn.weight[:3] = 0.0
            bn.bias[:3] = 0.0
    pruned = prune_structured(model, StructuredSpec("slimming", ratio=9 / channel_total(model)), _x())
    for b, n in (("layer1.0", 16), ("layer2.4", 32), ("layer3.8", 64)):
        assert pruned.get_submodule(f"{b}.conv1").out_channels == n - 3
    assert torch.allclose(model(_x()), pruned(_x()), atol=1e-5)


def channel_total(model):
    counts = channel_counts(model)
    return sum(counts[n] for n in prunable_convs(model))


# ------------------------------------------------------------------ which channels go

def test_l1_filter_keeps_largest_filter_norms():
    model = _small()
    conv, bn, nxt = model.features[0], model.features[1], model.features[3]
    scale = torch.tensor([3.0, 0.1, 5.0, 0.2, 4.0, 0.3])  # filter L1 = 9 * scale
    with torch.no_grad():
        conv.weight.copy_(scale.view(6, 1, 1, 1) * torch.ones(6, 1, 3, 3))
        # large downstream weights and gammas on the weak filters: a group-averaged score (the
        # library default) would keep them; Li et al.'s filter-only L1 must not
        nxt.weight[:, [1, 3, 5]] = 100.0
        bn.weight.copy_(torch.tensor([1.0, 50, 1, 50, 1, 50]))
    pruned = prune_structured(model, StructuredSpec("l1-filter", 0.5, layer_ratios={"features.3": 0.0,
                                                                                     "features.6": 0.0}), SMALL_X)
    keep = [0, 2, 4]
    assert torch.equal(pruned.features[0].weight, conv.weight[keep])
    assert torch.equal(pruned.features[1].weight, bn.weight[keep])
    assert torch.equal(pruned.features[3].weight, nxt.weight[:, keep])
    assert channel_counts(pruned) == {"features.0": 3, "features.3": 8, "features.6": 10, "fc": 3}


def test_l1_filter_rounding_follows_li_et_al():
    # kept = floor(n * (1 - ratio)): 10 channels at 0.15 -> 8 (as int(out * (1 - p)) in their code)
    pruned = prune_structured(_small(), StructuredSpec("l1-filter", 0.15), SMALL_X)
    assert channel_counts(pruned) == {"features.0": 5, "features.3": 6, "features.6": 8, "fc": 3}


def test_slimming_one_global_threshold_on_abs_gamma():
    model = _small()
    gam = {1: [0.9, -0.01, 0.5, 0.02, -0.8, 0.6],
           4: [0.03, 0.7, -0.04, 0.65, 0.05, 0.75, 0.06, 0.85],
           7: [0.3, 0.35, -0.4, 0.45, 0.07, 0.55, 0.08, 0.95, -0.09, 0.99]}
    with torch.no_grad():
        for i, g in gam.items():
            model.features[i].weight.copy_(torch.tensor(g))
    # 24 channels, ratio 0.375 -> the 9 smallest |gamma| go: 0.01..0.09, i.e. 2 / 4 / 3 per layer
    pruned = prune_structured(model, StructuredSpec("slimming", 0.375), SMALL_X)
    for i, g in gam.items():
        g = torch.tensor(g)
        assert torch.equal(pruned.features[i].weight, g[g.abs() > 0.095]), i
    assert channel_counts(pruned)["features.3"] == 4


def test_slimming_never_empties_a_layer():
    model = _small()
    with torch.no_grad():
        model.features[1].weight.copy_(torch.tensor([1e-4, 2e-4, 3e-4, -4e-4, 5e-4, 6e-4]))
        model.features[4].weight.fill_(1.0)
        model.features[7].weight.fill_(2.0)
    pruned = prune_structured(model, StructuredSpec("slimming", 0.25), SMALL_X)  # 6 of 24: all of layer 1
    assert channel_counts(pruned)["features.0"] == 1
    assert torch.allclose(pruned.features[1].weight, torch.tensor([6e-4]))


def test_random_channel_is_seeded():
    model = build_model("conv4", CIFAR, 10)
    x = _x(n=2)

    def run(seed):
        return prune_structured(model, StructuredSpec("random-channel", 0.5, seed=seed), x)
    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    l1 = prune_structured(model, StructuredSpec("l1-filter", 0.5), x)
    assert channel_counts(a) == channel_counts(l1)  # the control has the same per-layer counts


# ------------------------------------------------------------------ presets (Li et al. 2017, Table 1)

# Table 1 of Li et al. 2017: (params before, after, % removed), (FLOPs before, after, % removed).
PUBLISHED = {
    "vgg16-a": ((1.5e7, 5.4e6, 64.0), (3.13e8, 2.06e8, 34.2)),
    "resnet56-a": ((8.5e5, 7.7e5, 9.4), (1.25e8, 1.12e8, 10.4)),
    "resnet56-b": ((8.5e5, 7.3e5, 13.7), (1.25e8, 9.09e7, 27.6)),
    "resnet110-a": ((1.72e6, 1.68e6, 2.3), (2.53e8, 2.13e8, 15.9)),
    "resnet110-b": ((1.72e6, 1.16e6, 32.4), (2.53e8, 1.55e8, 38.6)),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_presets_reproduce_published_reductions(preset, vgg16, resnet56):
    """Measured (params; multiply-adds, Li et al.'s FLOP convention):
    vgg16-a 64.0% / 34.2%, resnet56-a 9.3% / 10.4%, resnet56-b 13.8% / 27.6%,
    resnet110-a 2.3% / 15.9%, resnet110-b 32.4% / 38.7%.  The table rounds to 0.1 points and its
    models differ from ours only in bookkeeping (BN parameters counted or not), so 0.3 points of
    tolerance; absolute counts agree with the table's 2-3 significant digits within 2%."""
    name = PRESETS[preset].model
    model = {"vgg16": vgg16, "resnet56": resnet56}.get(name) or build_model(name, CIFAR, 10)
    pruned = prune_structured(model, StructuredSpec("l1-filter", preset=preset), _x(n=2))
    (p0, p1, p_pct), (f0, f1, f_pct) = PUBLISHED[preset]
    params = (count_params(model), count_params(pruned))
    macs = (count_macs(model, CIFAR), count_macs(pruned, CIFAR))
    assert 100 * (1 - params[1] / params[0]) == pytest.approx(p_pct, abs=0.3)
    assert 100 * (1 - macs[1] / macs[0]) == pytest.approx(f_pct, abs=0.3)
    assert params[1] == pytest.approx(p1, rel=0.02) and macs[1] == pytest.approx(f1, rel=0.02)
    assert params[0] == pytest.approx(p0, rel=0.02) and macs[0] == pytest.approx(f0, rel=0.02)
    assert PRESETS[preset].published == pytest.approx({"params": p_pct / 100, "flops": f_pct / 100})


def test_preset_layers(resnet56):
    ratios = PRESETS["resnet56-b"].layer_ratios(resnet56)
    # Li et al.'s layers 16, 18, 20, 34, 38, 54 = blocks 1.7, 1.8, 2.0, 2.7, 3.0, 3.8 are skipped
    skipped = {"layer1.7.conv1", "layer1.8.conv1", "layer2.0.conv1", "layer2.7.conv1",
               "layer3.0.conv1", "layer3.8.conv1"}
    assert set(ratios) == set(prunable_convs(resnet56)) - skipped
    assert {ratios[f"layer{s}.3.conv1"] for s in (1, 2, 3)} == {0.6, 0.3, 0.1}
    assert ratios["layer1.3.conv1"] == 0.6 and ratios["layer3.3.conv1"] == 0.1


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("kwargs, match", [
    ({"method": "taylor"}, "unknown structured pruning method"),
    ({"method": "l1-filter", "ratio": 1.0}, r"ratio must be a number in \[0, 1\)"),
    ({"method": "l1-filter", "ratio": -0.1}, r"ratio must be a number in \[0, 1\)"),
    ({"method": "l1-filter", "layer_ratios": {"features.0": 1.5}}, "layer_ratios"),
    ({"method": "l1-filter", "preset": "vgg99"}, "unknown preset"),
    ({"method": "slimming", "preset": "vgg16-a"}, "slimming uses one global"),
])
def test_spec_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredSpec(**kwargs)


def test_model_dependent_errors(resnet56):
    small, x = _small(widths=(2, 8, 10)), SMALL_X
    with pytest.raises(ValueError, match="does not exist"):
        prune_structured(small, StructuredSpec("l1-filter", layer_ratios={"features.9": 0.5}), x)
    with pytest.raises(ValueError, match="not prunable"):
        prune_structured(small, StructuredSpec("l1-filter", layer_ratios={"fc": 0.5}), x)
    with pytest.raises(ValueError, match="would remove all 2 channels of layer 'features.0'"):
        prune_structured(small, StructuredSpec("l1-filter", 0.6), x)
    with pytest.raises(ValueError, match="not prunable"):
        prune_structured(resnet56, StructuredSpec("l1-filter", layer_ratios={"layer1.0.conv2": 0.5}), _x(n=1))
    with pytest.raises(ValueError, match=r"preset 'vgg16-a' is for vgg16 .*CifarResNet"):
        prune_structured(resnet56, StructuredSpec("l1-filter", preset="vgg16-a"), _x(n=1))
    with pytest.raises(ValueError, match=r"preset 'resnet110-b' is for resnet110 .*CifarResNet\) has 55"):
        prune_structured(resnet56, StructuredSpec("l1-filter", preset="resnet110-b"), _x(n=1))
    with pytest.raises(ValueError, match="slimming needs a BatchNorm"):
        prune_structured(build_model("lenet300", (40,), 10), StructuredSpec("slimming"), _x((40,)))
    with pytest.raises(TypeError):
        prune_structured(small, {"method": "l1-filter"}, x)
    assert tuple(n for n, m in METHODS.items() if m.structured) == ("l1-filter", "slimming", "random-channel")


# ------------------------------------------------------------------ save, restore, re-init, training

def test_save_restore_round_trip():
    base = build_model("resnet20", CIFAR, 10)
    pruned = prune_structured(base, StructuredSpec("l1-filter", 0.4, layer_ratios={"layer3.2.conv1": 0.9}), _x())
    with torch.no_grad():  # make BN statistics non-trivial so they must round-trip too
        for m in pruned.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    buf = io.BytesIO()
    torch.save(pruned_state(pruned), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = build_model("resnet20", CIFAR, 10)  # other random weights, same architecture
    restored = restore_pruned(fresh, state)
    assert channel_counts(fresh)["layer3.2.conv1"] == 64  # the base is not modified
    assert channel_counts(restored) == channel_counts(pruned)
    assert restored.layer3[2].conv1.out_channels == 6
    pruned.eval(), restored.eval()
    assert torch.equal(pruned(_x()), restored(_x()))
    assert tuple(state["widths"]) == pruned.widths == restored.widths
    with pytest.raises(ValueError, match="not a structured pruning state"):
        restore_pruned(fresh, {"state_dict": {}})


def test_reinitialise_is_seeded_fresh_and_same_shape():
    pruned = prune_structured(build_model("vgg11", CIFAR, 10), StructuredSpec("l1-filter", 0.5), _x())
    with torch.no_grad():
        pruned.features[1].weight.fill_(0.3)
        pruned.features[1].running_mean.fill_(0.7)
    a, b, c = reinitialise(pruned, 5), reinitialise(pruned, 5), reinitialise(pruned, 6)
    assert channel_counts(a) == channel_counts(pruned)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert not torch.equal(a.features[0].weight, pruned.features[0].weight)
    assert torch.all(a.features[1].weight == 1) and torch.all(a.features[1].running_mean == 0)
    assert torch.all(pruned.features[1].weight == 0.3)  # the argument is not modified


def test_pruned_model_trains():
    shape = (3, 16, 16)  # small images keep this quick; the architecture is resnet20's
    pruned = prune_structured(build_model("resnet20", shape, 10), StructuredSpec("l1-filter", 0.5), _x(shape))
    pruned.train()
    x, y = _x(shape, n=16, seed=3), torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.SGD(pruned.parameters(), lr=0.05, momentum=0.9)  # after pruning: new Parameters
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(pruned(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------ slimming regulariser

def test_bn_l1_penalty_adds_sign_subgradient():
    model = _small()
    with torch.no_grad():
        model.features[1].weight.copy_(torch.tensor([1.0, -2, 3, -4, 5, -6]))
    model(SMALL_X).sum().backward()
    before = model.features[1].weight.grad.clone()
    bn_l1_penalty(model, 0.01)
    assert torch.allclose(model.features[1].weight.grad - before, 0.01 * torch.tensor([1.0, -1, 1, -1, 1, -1]))


def test_slimming_hook_shrinks_gammas():
    x, y = _x((1, 8, 8), n=16, seed=4), torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(4))

    def train(strength):
        model = _small(seed=7)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        if strength:
            opt.register_step_pre_hook(slimming_hook(model, strength))
        for _ in range(10):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return sum(m.weight.abs().sum().item() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    plain, sparse = train(0.0), train(0.1)
    # 24 gammas, 10 steps of lr 0.05 * 0.1 pull each |gamma| down by up to 0.05: about 1.2 in total
    assert sparse < plain - 1.0


# ------------------------------------------------------------------ exact counts, one allocation rule

def test_allocate_turns_scores_into_exact_channels():
    s = {"a": torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7]), "b": torch.tensor([0.2, 0.2, 0.8])}
    # allocation "layer": kept = floor(n * (1 - ratio)); the lowest scores go; a ratio-0 layer keeps all
    assert allocate(s, ratios={"a": 0.5, "b": 0.0}) == {"a": [0, 1, 3]}  # keeps 2 of 5: 0.9, 0.7
    # exact counts
    assert allocate(s, kept={"a": 4, "b": 1}) == {"a": [1], "b": [0, 1]}
    assert allocate(s, kept={"a": 5}) == {}
    # allocation "global": 8 channels, ratio 0.5 -> the 4 lowest overall (0.1, 0.2, 0.2, 0.3)
    assert allocate(s, ratio=0.5) == {"a": [1, 3], "b": [0, 1]}
    # ties at the threshold go to the earlier layer; a layer is never emptied
    assert allocate({"a": torch.ones(2), "b": torch.ones(2)}, ratio=0.5) == {"a": [0]}
    assert allocate({"a": torch.zeros(3), "b": torch.ones(3)}, ratio=0.5) == {"a": [0, 1]}
    with pytest.raises(TypeError, match="exactly one"):
        allocate(s, ratio=0.5, kept={"a": 1})
    with pytest.raises(ValueError, match="has 3 channels; cannot keep 4"):
        allocate(s, kept={"b": 4})
    with pytest.raises(ValueError, match="would remove all 3 channels of layer 'b'"):
        allocate(s, ratios={"b": 0.7})


def test_counts_keep_exactly_that_many_channels():
    model = _small(widths=(7, 13, 11))
    counts = {"features.0": 5, "features.3": 6, "features.6": 1}
    pruned = prune_structured(model, StructuredSpec("l1-filter", counts=counts), SMALL_X)
    assert channel_counts(pruned) == {**counts, "fc": 3}
    assert pruned(SMALL_X).shape == (4, 3)
    # the kept filters are the largest-L1 ones, in their original order (inputs sliced to match)
    def largest(conv, k):
        return sorted(torch.topk(conv.weight.detach().flatten(1).abs().sum(1), k).indices.tolist())
    keep0, keep3 = largest(model.features[0], 5), largest(model.features[3], 6)
    assert torch.equal(pruned.features[0].weight, model.features[0].weight[keep0])
    assert torch.equal(pruned.features[3].weight, model.features[3].weight[keep3][:, keep0])
    # a layer asked to keep 5 of 16 keeps exactly 5, whatever the rounding of 5/16
    conv = build_model("conv1d", (1, 40), 10, None)
    for k in (1, 5, 11, 31):
        got = prune_structured(conv, StructuredSpec("l1-filter", counts={"features.2": k}), _x((1, 40)))
        assert channel_counts(got)["features.2"] == k


def test_random_channel_reproduces_another_networks_counts_exactly():
    """The random control asks for another pruned network's kept channels (``counts``), layer by
    layer: odd sizes and counts where a ratio round trip would need half a channel of slack."""
    model = _small(widths=(7, 13, 11))
    l1 = prune_structured(model, StructuredSpec("l1-filter", 0.3, layer_ratios={"features.3": 0.45}), SMALL_X)
    assert channel_counts(l1) == {"features.0": 4, "features.3": 7, "features.6": 7, "fc": 3}  # floor(n * (1 - r))
    rnd = prune_structured(model, StructuredSpec("random-channel", counts=channel_counts(l1), seed=3), SMALL_X)
    assert channel_counts(rnd) == channel_counts(l1)
    again = prune_structured(model, StructuredSpec("random-channel", counts=channel_counts(l1), seed=3), SMALL_X)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in rnd.state_dict().items())
    # the counts of a slimming network (layers pruned unevenly) too
    vgg = build_model("vgg11", CIFAR, 10)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in vgg.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g))
    slim = prune_structured(vgg, StructuredSpec("slimming", 0.37), _x(n=1))
    assert len({channel_counts(slim)[n] / channel_counts(vgg)[n] for n in prunable_convs(vgg)}) > 1
    rnd = prune_structured(vgg, StructuredSpec("random-channel", counts=channel_counts(slim), seed=1), _x(n=1))
    assert channel_counts(rnd) == channel_counts(slim)


def test_counts_errors():
    small, x = _small(widths=(7, 13, 11)), SMALL_X
    with pytest.raises(ValueError, match="counts\\['features.0'\\] must be an integer >= 1"):
        StructuredSpec("l1-filter", counts={"features.0": 0})
    with pytest.raises(ValueError, match="layer_ratios and preset cannot be added"):
        StructuredSpec("l1-filter", counts={"features.0": 3}, layer_ratios={"features.3": 0.5})
    with pytest.raises(ValueError, match="has 7 channels; cannot keep 8"):
        prune_structured(small, StructuredSpec("l1-filter", counts={"features.0": 8}), x)
    with pytest.raises(ValueError, match="'fc' is not prunable"):
        prune_structured(small, StructuredSpec("l1-filter", counts={"fc": 2}), x)
    with pytest.raises(ValueError, match="'features.9' does not exist"):
        prune_structured(small, StructuredSpec("l1-filter", counts={"features.9": 2}), x)
    # a non-prunable layer named with its full count is fine (a whole channel_counts dict)
    same = prune_structured(small, StructuredSpec("l1-filter", counts=channel_counts(small)), x)
    assert channel_counts(same) == channel_counts(small)


# ------------------------------------------------------------------ a method from outside the packages

L2_FILTER = '''
from trainables.methods import PruningMethod, register_method


def l2_filter(layer, ctx):
    """The L2 norm of each output filter (one value per channel; the lowest go)."""
    return layer.weight.detach().flatten(1).norm(dim=1)


register_method(PruningMethod("l2-filter", l2_filter, structured=True, allocation="layer",
                              help="remove each conv's filters of smallest L2 norm"))
'''


def test_a_structured_method_registered_from_outside_prunes_with_the_shared_allocation(tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))  # the registration ends with the test
    (tmp_path / "my_l2_filter_method.py").write_text(L2_FILTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "my_l2_filter_method", raising=False)
    __import__("my_l2_filter_method")
    assert "l2-filter" in methods.selectable()
    model = build_model("conv1d", (1, 40), 10, None)
    with torch.no_grad():  # filter norms: L1 and L2 disagree on the order (many small vs one large weight)
        w = model.features[0].weight  # 32 filters of 3 weights
        w.copy_(torch.where(torch.arange(32).view(32, 1, 1) % 2 == 0, torch.tensor([[[1.0, 1.0, 1.0]]]),
                            torch.tensor([[[2.0, 0.0, 0.0]]])) * (1 + torch.arange(32).view(32, 1, 1) / 1000))
    pruned = prune_structured(model, StructuredSpec("l2-filter", 0.3), _x((1, 40)))
    assert channel_counts(pruned) == {"features.0": 22, "features.2": 22, "features.4": 22, "classifier": 10}
    # the 10 filters that go from features.0: the lowest L2 norms (sqrt(3) < 2: the even ones), smallest first
    norms = model.features[0].weight.detach().flatten(1).norm(dim=1)
    keep = sorted(set(range(32)) - set(torch.argsort(norms)[:10].tolist()))
    assert keep == [i for i in range(32) if i % 2 == 1 or i >= 20]
    assert torch.equal(pruned.features[0].weight, model.features[0].weight[keep])
    assert pruned(_x((1, 40))).shape == (4, 10)
    with pytest.raises(ValueError, match="already registered"):
        register_method(PruningMethod("l2-filter", "x:y", structured=True, allocation="layer", help="again"))


def test_a_global_method_ranks_all_layers_together(monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    register_method(PruningMethod("l1-global", "trainables.structured:l1_filter_score", structured=True,
                                  allocation="global", help="L1 filter norms under one threshold"))
    model = init_weights(build_model("conv1d", (1, 40), 10, None), 0)
    # 96 channels, 24 go under one threshold: all from features.0, whose filters have 3 weights
    # (the others' 96: larger L1 norms), where allocation "layer" would take 8 from each layer
    pruned = prune_structured(model, StructuredSpec("l1-global", 0.25), _x((1, 40)))
    assert channel_counts(pruned) == {"features.0": 8, "features.2": 32, "features.4": 32, "classifier": 10}
    with pytest.raises(ValueError, match="l1-global uses one global threshold"):
        StructuredSpec("l1-global", layer_ratios={"features.0": 0.5})


def test_a_method_with_bad_scores_is_refused(monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    register_method(PruningMethod("bad", lambda layer, ctx: torch.ones(3), structured=True, allocation="layer",
                                  help="wrong shape"))
    with pytest.raises(ValueError, match="'bad': the scores of layer 'features.0' must be a finite tensor of shape"):
        prune_structured(_small(), StructuredSpec("bad", 0.5), SMALL_X)
    with pytest.raises(ValueError, match="unknown structured pruning method 'magnitude'"):
        StructuredSpec("magnitude")
