"""Masks, IMP, rewinding, random re-init, the content-addressed artifact store, the method registry."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.nn.utils import prune

from tests.conftest import ROOT
from trainables import methods
from trainables.artifacts import ArtifactStore, spec_hash
from trainables.methods import (
    PruningMethod,
    get_method,
    register_method,
    score_function,
    selectable,
)
from trainables.models import build_model, init_weights
from trainables.config import PipelineConfig
from trainables.pipeline import Pipeline, derive_seed
from trainables.pruning import (
    full_masks,
    magnitude_score,
    per_round_fraction,
    prune_round,
    random_masks_like,
    sparsity,
)
from trainables.regimes import REGIMES


def _model(seed=0):
    return init_weights(build_model("mlp", (40,), 10), seed)


def test_global_round_prunes_exactly_the_smallest_weights():
    model = _model()
    masks = prune_round(model, full_masks(model), 0.5, "global")
    weights = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n in masks])
    kept = torch.cat([(p.detach() * masks[n]).flatten() for n, p in model.named_parameters() if n in masks])
    overall, per = sparsity(masks)
    assert overall == pytest.approx(0.5, abs=1e-4)
    threshold = weights.abs().kthvalue(int(0.5 * weights.numel())).values
    assert kept[kept != 0].abs().min() >= threshold
    assert len({round(v, 2) for v in per.values()}) > 1  # global: layers differ


def test_layerwise_round_prunes_each_layer_alike():
    model = _model()
    masks = prune_round(model, full_masks(model), 0.3, "layerwise")
    _, per = sparsity(masks)
    assert all(v == pytest.approx(0.3, abs=0.01) for v in per.values())


def test_iterative_rounds_remove_a_fraction_of_the_survivors():
    model = _model()
    masks = full_masks(model)
    p = per_round_fraction(0.8, 4)
    for r in range(1, 5):
        new = prune_round(model, masks, p, "global")
        assert all(torch.all(new[n] <= masks[n]) for n in masks)  # pruned stays pruned
        masks = new
        assert sparsity(masks)[0] == pytest.approx(1 - (1 - p) ** r, abs=1e-3)
    assert sparsity(masks)[0] == pytest.approx(0.8, abs=1e-3)


def test_random_masks_keep_per_layer_density():
    model = _model()
    masks = prune_round(model, full_masks(model), 0.6)
    rnd = random_masks_like(masks, seed=1)
    assert sparsity(rnd)[1] == pytest.approx(sparsity(masks)[1])
    assert any(not torch.equal(rnd[n], masks[n]) for n in masks)


def _library_masks(model, masks, fraction, scope):
    """The masks straight from torch.nn.utils.prune with its default importance (the weights)."""
    import copy
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    layers = [modules[p.rsplit(".", 1)[0]] for p in masks]
    for layer, m in zip(layers, masks.values()):
        prune.custom_from_mask(layer, "weight", m.bool())
    if scope == "global":
        prune.global_unstructured([(t, "weight") for t in layers], prune.L1Unstructured, amount=fraction)
    else:
        for t in layers:
            prune.l1_unstructured(t, "weight", amount=fraction)
    return {p: t.weight_mask.float() for p, t in zip(masks, layers)}


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_magnitude_scores_give_the_librarys_own_masks(scope):
    model = _model()
    with torch.no_grad():  # ties: the library's tie-breaking must carry over
        next(model.parameters())[:, :5] = 0.25
    ours, lib = full_masks(model), full_masks(model)
    for _ in range(3):
        ours, lib = prune_round(model, ours, 0.4, scope, "magnitude"), _library_masks(model, lib, 0.4, scope)
        assert all(torch.equal(ours[n], lib[n]) for n in lib)


# ------------------------------------------------------------------ the pruning-method registry

def test_registry_imports_no_torch():
    code = "import trainables.methods, sys; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)


def test_builtin_methods():
    assert list(methods.METHODS) == ["magnitude", "l1-filter", "slimming", "random-channel"]
    assert selectable() == ("magnitude", "l1-filter", "slimming")
    assert score_function("magnitude") is magnitude_score
    slim = get_method("slimming")
    assert slim.structured and slim.allocation == "global" and slim.needs_batchnorm and slim.bn_penalty
    assert [get_method(n).allocation for n in ("magnitude", "l1-filter", "random-channel")] == ["scope", "layer", "layer"]
    with pytest.raises(KeyError, match="unknown pruning method 'taylor'; known: magnitude, l1-filter"):
        get_method("taylor")
    with pytest.raises(ValueError, match="l1-filter is a structured method"):
        prune_round(_model(), full_masks(_model()), 0.5, method="l1-filter")


@pytest.mark.parametrize("fields, match", [
    ({"name": "magnitude"}, "already registered"),
    ({"name": "Two Words"}, "name must be lower-case"),
    ({"score": 3}, "score must be a function or 'module:function'"),
    ({"score": "no_colon"}, "score must be a function or 'module:function'"),
    ({"allocation": "layer"}, "allocation of an unstructured method must be one of scope"),
    ({"structured": True, "allocation": "scope"}, "allocation of a structured method must be one of layer, global"),
    ({"structured": 1}, "structured must be True or False"),
    ({"needs_batchnorm": True}, "needs_batchnorm applies to structured methods only"),
    ({"help": ""}, "help must be one non-empty line"),
])
def test_register_refuses_duplicates_and_bad_fields(monkeypatch, fields, match):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    base = {"name": "new-method", "score": "m:f", "structured": False, "allocation": "scope", "help": "one line"}
    with pytest.raises(ValueError, match=match):
        register_method(PruningMethod(**{**base, **fields}))
    assert list(methods.METHODS) == ["magnitude", "l1-filter", "slimming", "random-channel"]


LARGEST_FIRST = """
from trainables.methods import PruningMethod, register_method


def largest_first(weight):
    return 1.0 / weight.abs()  # the largest magnitudes score lowest


register_method(PruningMethod("largest-first", largest_first, structured=False, allocation="scope",
                              help="remove the largest weights (a sanity control)"))
"""


def test_an_unstructured_method_registered_from_outside_gives_masks(tmp_path, monkeypatch):
    """One function and one register_method call in a module outside the packages."""
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    module = "my_largest_first_method"
    (tmp_path / f"{module}.py").write_text(LARGEST_FIRST)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    __import__(module)
    assert selectable()[-1] == "largest-first"
    model = _model()
    masks = prune_round(model, full_masks(model), 0.5, "global", method="largest-first")
    weights = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n in masks])
    kept = torch.cat([masks[n].flatten() for n, _ in model.named_parameters() if n in masks]).bool()
    assert sparsity(masks)[0] == pytest.approx(0.5, abs=1e-4)
    assert weights[kept].abs().max() <= weights[~kept].abs().min()  # the small half stays
    layerwise = prune_round(model, full_masks(model), 0.3, "layerwise", method="largest-first")
    assert all(v == pytest.approx(0.3, abs=0.01) for v in sparsity(layerwise)[1].values())


def test_scores_named_module_function_load_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    (tmp_path / "my_lazy_scores.py").write_text("def score(weight):\n    return weight.abs() ** 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_lazy_scores", raising=False)
    register_method(PruningMethod("squared", "my_lazy_scores:score", False, "scope", "|w|^2: magnitude's order"))
    assert "my_lazy_scores" not in sys.modules  # registration imports nothing
    model = _model()
    masks = prune_round(model, full_masks(model), 0.5, method="squared")
    assert "my_lazy_scores" in sys.modules and score_function("squared") is sys.modules["my_lazy_scores"].score
    assert sparsity(masks)[0] == pytest.approx(0.5, abs=1e-4)


def test_a_score_that_cannot_be_loaded_or_ranked_is_refused(monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    register_method(PruningMethod("missing", "no_such_module_xyz:score", False, "scope", "nowhere"))
    register_method(PruningMethod("signed", lambda w: w, False, "scope", "negative scores"))
    assert "no_such_module_xyz" not in sys.modules  # registration imports nothing
    with pytest.raises(ImportError, match="'missing': cannot load its score 'no_such_module_xyz:score'"):
        score_function("missing")
    with pytest.raises(ValueError, match="must be a non-negative tensor"):
        prune_round(_model(), full_masks(_model()), 0.5, method="signed")


def test_spec_hash_is_stable_across_processes_and_key_order():
    spec = {"b": [1, 2], "a": {"y": 0.1, "x": "s"}}
    assert spec_hash(spec) == spec_hash({"a": {"x": "s", "y": 0.1}, "b": [1, 2]})
    code = f"from trainables.hashing import spec_hash; print(spec_hash({spec!r}))"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == spec_hash(spec)
    assert spec_hash({**spec, "b": [1, 3]}) != spec_hash(spec)


@pytest.fixture
def pipeline(tmp_path, data_dir):
    cfg = PipelineConfig().updated(data_dir=data_dir, epochs=2, rounds=2, sparsity=0.75, rewind_epoch=1)
    return Pipeline(cfg, ArtifactStore(tmp_path / "artifacts"))


def test_winning_ticket_is_exactly_theta0_times_mask(pipeline):
    start = REGIMES["winning_ticket"].make_start(pipeline, 0.05, 0, pipeline.cfg.pruning.rounds)
    theta0 = pipeline.init(0).tensors()
    for name, w in start.weights.items():
        assert torch.equal(w, theta0[name])
    model = pipeline.new_model()
    model.load_state_dict(start.weights)
    from trainables.training import Trainer
    Trainer(model, pipeline.splits, pipeline.train_spec(0.05, 0), start.masks)  # applies the mask
    params = dict(model.named_parameters())
    for name, m in start.masks.items():
        assert torch.equal(params[name].detach(), theta0[name] * m)
    assert start.sparsity[0] == pytest.approx(0.75, abs=1e-3)


def test_random_reinit_is_a_fresh_draw_from_the_same_initialiser(pipeline):
    wt = REGIMES["winning_ticket"].make_start(pipeline, 0.05, 0, pipeline.cfg.pruning.rounds)
    rr = REGIMES["random_reinit"].make_start(pipeline, 0.05, 0, pipeline.cfg.pruning.rounds)
    assert rr.artifacts["mask"] == wt.artifacts["mask"]  # same mask, one IMP run
    seed = rr.seeds["reinit_seed"]
    assert seed == derive_seed(0, "random_reinit") and seed != 0
    expected = _model(seed).state_dict()
    for name, w in rr.weights.items():
        assert torch.equal(w, expected[name])  # reproducible from the recorded seed
        if name.endswith("weight"):
            assert not torch.equal(w, wt.weights[name])
            fan_in = w.shape[1]
            assert w.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)  # same Kaiming scale


def test_late_rewind_starts_from_theta_k(pipeline):
    lr = REGIMES["late_rewind"].make_start(pipeline, 0.05, 0, pipeline.cfg.pruning.rounds)
    theta0 = pipeline.init(0).tensors()
    rewind = pipeline.train(pipeline.init(0), None, pipeline.train_spec(0.05, 0), 1)
    theta1 = rewind.tensors()
    for name, w in lr.weights.items():
        assert torch.equal(w, theta1[name]) and not torch.equal(w, theta0[name])
    assert lr.artifacts["rewind"] == rewind.name  # k = --rewind-epoch 1: the study's setting, in every row


def test_artifacts_are_computed_once_and_reused(pipeline, tmp_path):
    first = pipeline.imp(0.05, 0)
    assert first.theta0.computed and first.pretrained.computed and all(m.computed for m in first.masks)
    again = Pipeline(pipeline.cfg, ArtifactStore(tmp_path / "artifacts")).imp(0.05, 0)
    assert not again.pretrained.computed and not any(m.computed for m in again.masks)
    assert [m.name for m in again.masks] == [m.name for m in first.masks]
    other_lr = pipeline.imp(0.1, 0)
    assert other_lr.theta0.name == first.theta0.name and not other_lr.theta0.computed
    assert other_lr.pretrained.name != first.pretrained.name
    spec = json.loads((first.final_mask.path / "spec.json").read_text())
    assert spec["kind"] == "mask" and spec["prev"] == first.masks[0].name
    assert not list((tmp_path / "artifacts").glob(".tmp-*"))  # nothing half-written left


def test_retrain_coupling_shares_one_imp_across_lrs(tmp_path, data_dir):
    cfg = PipelineConfig().updated(data_dir=data_dir, epochs=1, rounds=1, lr_coupling="retrain", pretrain_lr=0.1)
    p = Pipeline(cfg, ArtifactStore(tmp_path / "a"))
    assert p.imp(0.01, 0).final_mask.name == p.imp(0.3, 0).final_mask.name


def test_diverged_pretraining_yields_no_mask(pipeline):
    start = REGIMES["winning_ticket"].make_start(pipeline, 1e4, 0, pipeline.cfg.pruning.rounds)
    assert start.weights is None and start.diverged_stage == "pretrain"
