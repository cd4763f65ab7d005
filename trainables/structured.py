"""Structured (channel) pruning that physically removes filters, through Torch-Pruning 1.6.

Three ways to choose the channels, all on one code path (``tp.pruner.BasePruner`` with local,
per-layer scopes, after our own per-layer channel counts have been fixed):

* ``l1-filter``  Li et al., "Pruning Filters for Efficient ConvNets" (ICLR 2017): in each layer,
  remove the filters with the smallest L1 norm of their own weights (no global ranking; per-layer
  ratios).  ``MagnitudeImportance(p=1, group_reduction="first", normalizer=None)`` scores exactly
  the root layer's filter: Torch-Pruning's default (``group_reduction="mean"``) would average the
  filter's norm with the BN gamma and the next layer's input weights, which is not Li et al.'s rule.
* ``slimming``   Liu et al., "Learning Efficient Convolutional Networks through Network Slimming"
  (ICCV 2017): one global threshold on |gamma| over every prunable layer's BatchNorm; the channels
  below it go.  A layer is never emptied: if the threshold would remove all of a layer's channels, it
  keeps its largest-|gamma| channel (so the total removed can fall slightly short of ``ratio``).
  Ties at the threshold go to the earlier layer; an untrained net (every gamma 1) is all ties, so
  slimming it is meaningless: train with ``slimming_hook`` / ``bn_l1_penalty`` first.
  ``BNScaleImportance(normalizer=None)``: the library default normalises per layer (divides by the
  layer's mean), which would make a global threshold meaningless.
* ``random-channel``  the control: the same per-layer counts as ``l1-filter``, channels drawn at
  random from a generator seeded by ``(spec.seed, layer name)``, so a result is reproducible and
  independent of the order in which the library visits layers.

Which layers may lose output channels (``prunable_convs``) is read off Torch-Pruning's dependency
graph: a Conv/Linear is prunable when its out-channel group couples no other Conv/Linear (so it is
not tied to a residual sum) and contains no padding op, and it is not the classifier (the last
Conv/Linear executed).  For CIFAR ResNets with option-A (zero-pad) shortcuts this leaves exactly
the first conv of each block: the library traces ``F.pad`` as an element-wise op and would couple
all three stages into one wrong group (see STACK-NOTES "Pruning libraries").

A pruned model is stored as plain tensors and ints (``pruned_state``): the kept channel count of
every Conv/Linear plus the ``state_dict``; ``restore_pruned`` prunes a fresh base model down to
those counts and loads the weights.  ``tp.state_dict`` is not used: it pickles every module's
``__dict__`` (hooks, the option-A lambda), which ``torch.save`` cannot pickle and
``torch.load(weights_only=True)`` refuses.

Torch-Pruning creates new ``nn.Parameter`` objects: build the optimiser after pruning.
"""
from __future__ import annotations

import copy
import math
import numbers
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

METHODS = ("l1-filter", "slimming", "random-channel")
STATE_FORMAT = "structured-channels-v1"

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PARAM_LAYERS = (nn.Linear, *_CONVS)
_BN = nn.modules.batchnorm._BatchNorm
_INPUT_ATTR = "structured_input_shape"  # set on pruned models: the per-example input shape traced
_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# Spec and validation
# --------------------------------------------------------------------------------------------

def _check_ratio(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1) (fraction of channels removed), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class StructuredSpec:
    """What to prune.

    ``ratio``: fraction of output channels removed in every prunable layer (l1-filter,
    random-channel), or the global fraction of BN channels under the one threshold (slimming).
    ``layer_ratios``: per-layer overrides, layer name -> ratio (names from ``prunable_convs``).
    ``preset``: a published per-layer setting from ``PRESETS``; it fixes every layer's ratio
    (layers it does not name keep all channels, ``ratio`` is ignored); ``layer_ratios`` still
    override it.  ``seed``: the random-channel draw.
    """

    method: str
    ratio: float = 0.5
    layer_ratios: dict[str, float] | None = None
    preset: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown structured pruning method {self.method!r}; known: {METHODS}")
        _check_ratio(self.ratio, "ratio")
        for name, r in (self.layer_ratios or {}).items():
            _check_ratio(r, f"layer_ratios[{name!r}]")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        if self.method == "slimming" and (self.layer_ratios or self.preset):
            raise ValueError("slimming uses one global |gamma| threshold; layer_ratios and preset apply "
                             "to l1-filter and random-channel only")


def _kept(n: int, ratio: float) -> int:
    """Channels kept when ``ratio`` of ``n`` are removed: floor, as Li et al.'s code and Torch-Pruning."""
    return math.floor(n * (1.0 - ratio) + _EPS)


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


# --------------------------------------------------------------------------------------------
# Graph analysis
# --------------------------------------------------------------------------------------------

class _Modes:
    """Torch-Pruning's tracer calls ``model.eval()`` and never undoes it: restore every flag."""

    def __init__(self, model: nn.Module):
        self.flags = [(m, m.training) for m in model.modules()]

    def restore(self) -> None:
        for m, flag in self.flags:
            m.training = flag


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _guess_example(model: nn.Module) -> torch.Tensor:
    """One input for tracing when none is given: the shape recorded on a pruned model, a model's
    ``input_shape`` attribute, or a guess from the first layer (CIFAR 32x32, MNIST-1D length 40)."""
    candidates: list[tuple[int, ...]] = []
    for attr in (_INPUT_ATTR, "input_shape"):
        shape = getattr(model, attr, None)
        if shape:
            candidates.append(tuple(int(s) for s in shape))
    first = next((m for m in model.modules() if isinstance(m, _PARAM_LAYERS)), None)
    if isinstance(first, nn.Conv2d):
        candidates += [(first.in_channels, 32, 32), (first.in_channels, 28, 28)]
        if first.in_channels == 1:
            candidates += [(28, 28), (32, 32)]
    elif isinstance(first, nn.Conv1d):
        candidates += [(first.in_channels, 40), (40,)]
    elif isinstance(first, nn.Linear):
        candidates += [(first.in_features,)]
    modes = _Modes(model)
    model.eval()
    try:
        for shape in candidates:
            x = torch.zeros(2, *shape, device=_device(model))
            try:
                with torch.no_grad():
                    model(x)
            except Exception:  # noqa: BLE001, S112 - a wrong guess; try the next one
                continue
            return x
    finally:
        modes.restore()
    raise ValueError(f"cannot infer an input for {type(model).__name__}; pass example_input "
                     "(one batch, e.g. torch.zeros(1, *input_shape))")


def _is_pad_op(module: Any) -> bool:
    return isinstance(module, tp.ops._ElementWiseOp) and "pad" in repr(module).lower()


@dataclass
class _Analysis:
    dg: tp.DependencyGraph
    prunable: list[str]          # module order
    classifier: str | None
    bn_of: dict[str, str | None]  # prunable layer -> the BatchNorm on its output channels


def _analyse(model: nn.Module, example_input: torch.Tensor | None) -> _Analysis:
    """Trace ``model`` (restoring its train/eval flags) and classify its Conv/Linear layers."""
    example = example_input if example_input is not None else _guess_example(model)
    name_of = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(name_of[mod]))
             for m in model.modules() if isinstance(m, _PARAM_LAYERS)]
    modes = _Modes(model)
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        for h in hooks:
            h.remove()
        modes.restore()
    classifier = order[-1] if order else None
    # Structured methods remove conv filters; only a net without convs (an MLP) loses neurons.
    has_conv = any(isinstance(m, _CONVS) for m in model.modules())
    kinds = _CONVS if has_conv else (nn.Linear,)
    prunable: list[str] = []
    bn_of: dict[str, str | None] = {}
    excluded: set[nn.Module] = set()  # layers already found in a coupled group (saves re-tracing it)
    for name, m in model.named_modules():
        if not isinstance(m, kinds) or name == classifier or m not in dg.module2node or m in excluded:
            continue
        if _out_channels(m) < 2:
            continue
        group = dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels, [0])
        coupled, pad, bn = [], False, None
        for dep, _ in group:
            target = dep.target.module
            pad = pad or _is_pad_op(target)
            if not dg.is_out_channel_pruning_fn(dep.handler):
                continue
            if isinstance(target, _PARAM_LAYERS) and target is not m:
                coupled.append(target)
            if isinstance(target, _BN) and bn is None:
                bn = name_of.get(target)
        if not coupled and not pad:
            prunable.append(name)
            bn_of[name] = bn
        else:
            excluded.update(coupled)
    return _Analysis(dg, prunable, classifier, bn_of)


def prunable_convs(model: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """Names of the Conv/Linear layers whose output channels can be removed safely (module order).

    Plain nets (VGG, Conv-N): every conv (their hidden FC layers are not pruned: the structured
    methods of the paper remove conv filters); nets without convs (MLPs, LeNet-300-100): the hidden
    Linear layers; ResNets: only the convs whose output does not feed a residual sum (the first
    conv of each basic block).  Never the classifier.  ``example_input`` (one batch) is needed for tracing unless the input
    shape can be inferred (see ``_guess_example``).
    """
    return _analyse(model, example_input).prunable


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels (Conv) or features (Linear) of every Conv/Linear layer, for reports."""
    return {n: _out_channels(m) for n, m in model.named_modules() if isinstance(m, _PARAM_LAYERS)}


# --------------------------------------------------------------------------------------------
# Presets: the per-layer settings of Li et al. 2017 (as re-run by Liu et al. 2019)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    name: str
    model: str                      # registry name it is defined for
    n_convs: int                    # Conv2d layers the model must have (module order)
    description: str
    published: dict[str, float]     # fractions removed, as reported (params, flops)
    rule: Callable[[int], float]    # 1-based conv index (module order) -> ratio

    def layer_ratios(self, model: nn.Module) -> dict[str, float]:
        """Conv name -> ratio for ``model``; ValueError when the preset does not fit it."""
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if len(convs) != self.n_convs:
            raise ValueError(f"preset {self.name!r} is for {self.model} ({self.n_convs} conv layers); "
                             f"this model ({type(model).__name__}) has {len(convs)}")
        return {n: r for i, n in enumerate(convs, start=1) if (r := self.rule(i)) > 0}


def _vgg16_a(i: int) -> float:
    # Li et al. 2017, Sec. 4.1 / Table 2: VGG-16-pruned-A removes 50% of the filters of conv_1 and of
    # conv_8..conv_13 (the layers that are insensitive to pruning), nothing elsewhere.  The Rethinking
    # code (cifar/l1-norm-pruning/vggprune.py) uses the same configuration:
    # [32, 64, M, 128, 128, M, 256, 256, 256, M, 256, 256, 256, M, 256, 256, 256].
    return 0.5 if i == 1 or 8 <= i <= 13 else 0.0


def _resnet_rule(blocks: int, skip: Iterable[int], stage_ratio: tuple[float, float, float]) -> Callable[[int], float]:
    """Li et al.'s indexing: Conv2d layers numbered 1.. in module order; 1 is the stem, then each
    block contributes (conv1, conv2), so the block-internal first convs are the even indices.
    Stage s (0-based) holds the even indices 2 + 2*blocks*s .. 2*blocks*(s+1)."""
    skip = frozenset(skip)

    def rule(i: int) -> float:
        if i % 2 == 1 or i in skip:
            return 0.0
        return stage_ratio[min(2, (i - 1) // (2 * blocks))]
    return rule


# Li et al. 2017, Sec. 4.2: "layers that are sensitive to pruning (layers 20, 38 and 54) lie at the
# residual blocks close to the layers where the number of feature maps changes ... We skip those
# sensitive layers".  ResNet-56-pruned-A prunes 10% of the filters everywhere while skipping layers
# 16, 20, 38, 54; ResNet-56-pruned-B skips 16, 18, 20, 34, 38, 54 and prunes 60%/30%/10% in stages
# 1/2/3.  ResNet-110-pruned-A prunes 50% of stage 1 only, skipping layer 36; ResNet-110-pruned-B
# skips 36, 38, 74 and prunes 50%/40%/30%.  Layer numbers are Li et al.'s conv indices (see
# _resnet_rule).  The skip lists and ratios written here are exactly those of the Rethinking
# authors' code (cifar/l1-norm-pruning/res56prune.py and res110prune.py, dicts ``skip`` and
# ``prune_prob``); they reproduce Li et al.'s Table 1 reductions to within 0.1 percentage point
# (tests/test_structured.py).  A 10%/20%/40% stage split for ResNet-56-B (sometimes quoted) does not:
# it removes 28.4% of the parameters and 19.7% of the FLOPs, against the published 13.7% / 27.6%.
# The index -> layer mapping assumes the stem conv comes first in module order and each basic block
# registers conv1 before conv2 (true of trainables.models.CifarResNet); the conv count is checked.
PRESETS: dict[str, Preset] = {
    "vgg16-a": Preset("vgg16-a", "vgg16", 13, "VGG-16-pruned-A: 50% of conv 1 and 8-13",
                      {"params": 0.640, "flops": 0.342}, _vgg16_a),
    "resnet56-a": Preset("resnet56-a", "resnet56", 55, "ResNet-56-pruned-A: 10% of block conv1, skip 16/20/38/54",
                         {"params": 0.094, "flops": 0.104},
                         _resnet_rule(9, (16, 20, 38, 54), (0.1, 0.1, 0.1))),
    "resnet56-b": Preset("resnet56-b", "resnet56", 55,
                         "ResNet-56-pruned-B: 60/30/10% of block conv1 per stage, skip 16/18/20/34/38/54",
                         {"params": 0.137, "flops": 0.276},
                         _resnet_rule(9, (16, 18, 20, 34, 38, 54), (0.6, 0.3, 0.1))),
    "resnet110-a": Preset("resnet110-a", "resnet110", 109, "ResNet-110-pruned-A: 50% of stage-1 block conv1, skip 36",
                          {"params": 0.023, "flops": 0.159},
                          _resnet_rule(18, (36,), (0.5, 0.0, 0.0))),
    "resnet110-b": Preset("resnet110-b", "resnet110", 109,
                          "ResNet-110-pruned-B: 50/40/30% of block conv1 per stage, skip 36/38/74",
                          {"params": 0.324, "flops": 0.386},
                          _resnet_rule(18, (36, 38, 74), (0.5, 0.4, 0.3))),
}


def preset_layer_ratios(preset: str, model: nn.Module) -> dict[str, float]:
    """The named preset's layer -> ratio map for ``model`` (ValueError if unknown or unfit)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    return PRESETS[preset].layer_ratios(model)


# --------------------------------------------------------------------------------------------
# Importances
# --------------------------------------------------------------------------------------------

class SeededRandomImportance(tp.importance.Importance):
    """Random scores from a generator seeded by (seed, root layer name): reproducible, and a layer's
    draw does not depend on which other layers are pruned or in what order they are visited."""

    def __init__(self, seed: int, names: dict[nn.Module, str]):
        self.seed = int(seed)
        self.names = names

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:
        dep, idxs = group[0]
        name = self.names.get(dep.target.module, "")
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        return torch.rand(len(idxs), generator=g)


def _importance(spec: StructuredSpec, names: dict[nn.Module, str]) -> tp.importance.Importance:
    if spec.method == "l1-filter":
        return tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None)
    if spec.method == "slimming":
        return tp.importance.BNScaleImportance(normalizer=None)
    return SeededRandomImportance(spec.seed, names)


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------

def _layer_ratios(model: nn.Module, spec: StructuredSpec, prunable: list[str]) -> dict[str, float]:
    modules = dict(model.named_modules())
    if spec.preset is not None:
        ratios = {n: 0.0 for n in prunable}
        preset = preset_layer_ratios(spec.preset, model)
        unfit = [n for n in preset if n not in prunable]
        if unfit:
            raise ValueError(f"preset {spec.preset!r} does not fit this model ({type(model).__name__}): "
                             f"layer(s) {unfit} are not prunable")
        ratios.update(preset)
    else:
        ratios = {n: spec.ratio for n in prunable}
    for name, r in (spec.layer_ratios or {}).items():
        if name not in prunable:
            why = ("is not prunable (classifier, or its output feeds a residual sum)" if name in modules
                   else "does not exist")
            raise ValueError(f"layer_ratios: layer {name!r} {why}; prunable layers: {prunable}")
        ratios[name] = r
    return ratios


def _slimming_counts(model: nn.Module, ratio: float, analysis: _Analysis) -> dict[str, int]:
    """Channels to remove per layer under one global |gamma| threshold, never emptying a layer."""
    modules = dict(model.named_modules())
    layers = [(n, modules[b]) for n in analysis.prunable
              if (b := analysis.bn_of.get(n)) is not None and modules[b].weight is not None]
    if not layers:
        raise ValueError("slimming needs a BatchNorm (with affine weights) after the prunable layers; "
                         f"{type(model).__name__} has none")
    gammas = [bn.weight.detach().abs().float().cpu() for _, bn in layers]
    scores = torch.cat(gammas)
    total = len(scores)
    k = total - _kept(total, ratio)
    if k == 0:
        return {}
    owner = torch.cat([torch.full((len(g),), i) for i, g in enumerate(gammas)])
    removed = owner[torch.argsort(scores, stable=True)[:k]]
    per_layer = torch.bincount(removed, minlength=len(layers)).tolist()
    return {n: min(c, len(g) - 1) for (n, _), c, g in zip(layers, per_layer, gammas) if c > 0}


def prune_structured(model: nn.Module, spec: StructuredSpec, example_input: torch.Tensor) -> nn.Module:
    """A new, physically smaller copy of ``model`` (the argument is not modified).

    The copy keeps the inherited weights of the surviving channels (fine-tuning starts from it;
    ``reinitialise`` gives the scratch baseline), and the train/eval flags of ``model``.
    """
    if not isinstance(spec, StructuredSpec):
        raise TypeError(f"spec must be a StructuredSpec, got {type(spec).__name__}")
    work = copy.deepcopy(model)
    example_input = example_input.to(_device(work))
    analysis = _analyse(work, example_input)
    modules = dict(work.named_modules())
    names = {m: n for n, m in modules.items()}
    initial = {n: _out_channels(modules[n]) for n in analysis.prunable}

    if spec.method == "slimming":
        n_remove = _slimming_counts(work, spec.ratio, analysis)
    else:
        n_remove = {}
        for name, r in _layer_ratios(work, spec, analysis.prunable).items():
            kept = _kept(initial[name], r)
            if kept < 1:
                raise ValueError(f"ratio {r} would remove all {initial[name]} channels of layer {name!r}")
            if kept < initial[name]:
                n_remove[name] = initial[name] - kept

    if n_remove:
        # Torch-Pruning keeps int(n * (1 - ratio)) channels; asking for (k - 0.5) / n removes exactly k.
        ratio_dict = {modules[n]: (k - 0.5) / initial[n] for n, k in n_remove.items()}
        ignored = [m for n, m in modules.items() if isinstance(m, _PARAM_LAYERS) and n not in n_remove]
        modes = _Modes(work)
        try:
            pruner = tp.pruner.BasePruner(
                work, example_input, importance=_importance(spec, names), global_pruning=False,
                pruning_ratio=0.0, pruning_ratio_dict=ratio_dict, ignored_layers=ignored,
                root_module_types=list(_PARAM_LAYERS))
            pruner.step()
        finally:
            modes.restore()
    got = channel_counts(work)
    wrong = {n: (initial[n] - n_remove.get(n, 0), got[n]) for n in initial
             if got[n] != initial[n] - n_remove.get(n, 0)}
    if wrong:  # guards against a silent change of the library's rounding or grouping
        raise RuntimeError(f"structured pruning left unexpected channel counts (expected, got): {wrong}")
    setattr(work, _INPUT_ATTR, tuple(int(s) for s in example_input.shape[1:]))
    _refresh_widths(work)
    return work


def _refresh_widths(model: nn.Module) -> None:
    """The image models of ``trainables.models`` carry ``widths``, the tuple that rebuilds them
    through ``build_model``; after pruning it must describe the pruned architecture (a stale value
    would silently rebuild the dense net).  Models without ``widths`` are left alone."""
    old = getattr(model, "widths", None)
    if old is None:
        return
    old = tuple(old)
    if hasattr(model, "block_names"):  # CifarResNet: 3 stage widths, then each block's conv1 width
        mids = [model.get_submodule(f"{b}.conv1").out_channels for b in model.block_names]
        model.widths = (*old[:3], *mids)
    elif hasattr(model, "conv_bn_pairs"):  # VGG: the cfg, ints being the conv widths in order
        it = iter([model.get_submodule(c).out_channels for c, _ in model.conv_bn_pairs])
        model.widths = tuple(v if v == "M" else next(it) for v in old)
    elif type(model).__name__ == "ConvNet":  # Conv-N: conv widths, then the hidden FC widths
        convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
        fcs = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]
        model.widths = (*convs, *fcs)


# --------------------------------------------------------------------------------------------
# Network slimming's sparsity regulariser
# --------------------------------------------------------------------------------------------

def bn_l1_penalty(model: nn.Module, strength: float) -> None:
    """Add ``strength * sign(gamma)`` to every BatchNorm weight's gradient (the subgradient of
    ``strength * sum|gamma|``), as in the network-slimming code.  Call after ``loss.backward()``."""
    if strength:
        _add_l1_subgradient(_bn_scales(model), strength)


def _bn_scales(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, _BN) and m.weight is not None]


def _add_l1_subgradient(scales: list[torch.Tensor], strength: float) -> None:
    with torch.no_grad():
        for w in scales:
            if w.grad is not None:
                w.grad.add_(torch.sign(w), alpha=strength)


def slimming_hook(model: nn.Module, strength: float) -> Callable[[torch.optim.Optimizer, tuple, dict], None]:
    """``optimizer.register_step_pre_hook(slimming_hook(model, s))``: the L1 subgradient on the BN
    weights is added right before every optimiser step (the BN layers are found once, here, not
    at every step)."""
    scales = _bn_scales(model)

    def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        _add_l1_subgradient(scales, strength)
    return hook


# --------------------------------------------------------------------------------------------
# Saving, restoring, re-initialising
# --------------------------------------------------------------------------------------------

def pruned_state(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild a pruned model from its base architecture, as plain ints and
    tensors (``torch.save`` / ``torch.load(weights_only=True)`` safe).  ``input_shape`` (per example)
    defaults to the one recorded by ``prune_structured``."""
    shape = input_shape or getattr(model, _INPUT_ATTR, None)
    if not shape:
        raise ValueError("pruned_state needs input_shape (this model was not made by prune_structured)")
    return {
        "format": STATE_FORMAT,
        "input_shape": [int(s) for s in shape],
        "channels": channel_counts(model),
        "widths": list(getattr(model, "widths", None) or []),  # build_model widths, where the model has them
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def restore_pruned(base_model: nn.Module, state: dict[str, Any]) -> nn.Module:
    """Rebuild the pruned model of ``pruned_state`` from an unpruned ``base_model`` of the same
    architecture (not modified): prune each layer down to its recorded channel count, then load the
    weights.  Which channels are cut does not matter: every weight is overwritten."""
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"not a structured pruning state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
    work = copy.deepcopy(base_model)
    shape = tuple(state["input_shape"])
    have = channel_counts(work)
    want = state["channels"]
    if set(have) != set(want):
        raise ValueError(f"state does not fit {type(base_model).__name__}: layers differ "
                         f"({sorted(set(have) ^ set(want))[:5]} ...)")
    grow = [n for n in want if want[n] > have[n]]
    if grow:
        raise ValueError(f"state has more channels than the base model in {grow}")
    modes = _Modes(work)
    try:
        dg = tp.DependencyGraph().build_dependency(
            work, example_inputs=torch.zeros(1, *shape, device=_device(work)), verbose=False)
        modules = dict(work.named_modules())
        for name, n in want.items():
            current = _out_channels(modules[name])
            if n < current:
                m = modules[name]
                group = dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels,
                                             list(range(n, current)))
                group.prune()
    finally:
        modes.restore()
    got = channel_counts(work)
    if got != want:
        raise ValueError(f"could not rebuild the pruned architecture: {({k: (want[k], got[k]) for k in want if want[k] != got[k]})}")
    work.load_state_dict(state["state_dict"], strict=True)
    setattr(work, _INPUT_ATTR, shape)
    _refresh_widths(work)
    return work


def reinitialise(pruned_model: nn.Module, seed: int) -> nn.Module:
    """A copy of the pruned architecture with fresh weights from ``seed`` (the Scratch-E/B start):
    ``trainables.models.init_weights`` (BatchNorm: gamma=1, beta=0, fresh running statistics); the
    argument is not modified."""
    from trainables.models import init_weights
    return init_weights(copy.deepcopy(pruned_model), seed)
