"""Structured (channel) pruning that physically removes output channels, through Torch-Pruning 1.6.

A method (``trainables.methods``) scores each prunable layer's output channels; ``allocate``
turns the scores and the spec's ratios or exact counts into the channels to remove, and
Torch-Pruning's dependency graph removes exactly those (with the matching BatchNorm entries and
input slices downstream).  Which layers are prunable, how each built-in method chooses, presets,
saving and restoring: docs/pruning.md.  Build the optimiser after pruning (new Parameters).
"""
from __future__ import annotations

import copy
import math
import numbers
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from trainables import methods as registry
from trainables.config import PRESET_NAMES
from trainables.methods import LayerContext, PruningMethod, score_function

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


def _structured_method(name: Any) -> PruningMethod:
    method = registry.METHODS.get(name) if isinstance(name, str) else None
    if method is None or not method.structured:
        known = tuple(n for n, m in registry.METHODS.items() if m.structured)
        raise ValueError(f"unknown structured pruning method {name!r}; known: {known}")
    return method


@dataclass(frozen=True)
class StructuredSpec:
    """What to prune.

    ``method``: a structured method of ``trainables.methods.METHODS``.  ``ratio``: fraction of
    output channels removed in every prunable layer (allocation "layer": l1-filter,
    random-channel), or the global fraction of all candidate channels under one threshold
    (allocation "global": slimming).  ``layer_ratios``: per-layer overrides, layer name -> ratio
    (names from ``prunable_convs``).  ``preset``: a published per-layer setting from ``PRESETS``;
    it fixes every layer's ratio (layers it does not name keep all channels, ``ratio`` is ignored);
    ``layer_ratios`` still override it.  ``counts``: exact kept channels, layer name -> count; it
    replaces the ratios of any method (layers not named, or named with their full count, keep all
    channels; ``ratio`` is ignored), the method's scores still choosing which channels stay.
    ``seed``: the random-channel draw (``LayerContext.seed``).
    """

    method: str
    ratio: float = 0.5
    layer_ratios: dict[str, float] | None = None
    preset: str | None = None
    seed: int = 0
    counts: dict[str, int] | None = None

    def __post_init__(self) -> None:
        method = _structured_method(self.method)
        _check_ratio(self.ratio, "ratio")
        for name, r in (self.layer_ratios or {}).items():
            _check_ratio(r, f"layer_ratios[{name!r}]")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        for name, k in (self.counts or {}).items():
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise ValueError(f"counts[{name!r}] must be an integer >= 1 (channels kept), got {k!r}")
        if self.counts is not None and (self.layer_ratios or self.preset):
            raise ValueError("counts fix every layer's kept channels; layer_ratios and preset cannot be added")
        if method.allocation == "global" and (self.layer_ratios or self.preset):
            per_layer = ", ".join(n for n, m in registry.METHODS.items() if m.structured and m.allocation == "layer")
            raise ValueError(f"{method.name} uses one global threshold over all layers' scores; layer_ratios "
                             f"and preset apply to the per-layer methods ({per_layer}) only")


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
# the flags list the presets without importing this module (trainables.config.PRESET_NAMES)
if tuple(PRESETS) != PRESET_NAMES:
    raise ImportError("trainables.config.PRESET_NAMES must name exactly PRESETS, in order")


def preset_layer_ratios(preset: str, model: nn.Module) -> dict[str, float]:
    """The named preset's layer -> ratio map for ``model`` (ValueError if unknown or unfit)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    return PRESETS[preset].layer_ratios(model)


# --------------------------------------------------------------------------------------------
# The built-in methods' scoring functions (registered in trainables.methods; higher = kept)
# --------------------------------------------------------------------------------------------

def l1_filter_score(layer: nn.Module, ctx: LayerContext) -> torch.Tensor:
    """Li et al. 2017: the L1 norm of each output filter's own weights (not the BatchNorm's or the
    next layer's: Torch-Pruning's ``MagnitudeImportance(p=1, group_reduction="first")``)."""
    return layer.weight.detach().flatten(1).abs().sum(1)


def bn_scale_score(layer: nn.Module, ctx: LayerContext) -> torch.Tensor:
    """Network slimming (Liu et al. 2017): |gamma| of the BatchNorm on the layer's output channels."""
    if ctx.batchnorm is None or ctx.batchnorm.weight is None:
        raise ValueError(f"layer {ctx.name!r} has no BatchNorm with affine weights after it")
    return ctx.batchnorm.weight.detach().abs()


def random_channel_score(layer: nn.Module, ctx: LayerContext) -> torch.Tensor:
    """The control: uniform scores from a generator seeded by (seed, layer name), so a layer's draw
    does not depend on which other layers are pruned or in what order."""
    g = torch.Generator().manual_seed((int(ctx.seed) * 1_000_003 + zlib.crc32(ctx.name.encode())) % 2**63)
    return torch.rand(_out_channels(layer), generator=g)


# --------------------------------------------------------------------------------------------
# Allocation: scores and ratios (or exact counts) -> the channels to remove, for every method
# --------------------------------------------------------------------------------------------

def kept_per_layer(sizes: Mapping[str, int], ratios: Mapping[str, float]) -> dict[str, int]:
    """Allocation "layer": channels kept per layer, ``floor(n * (1 - ratio))`` (Li et al.'s code and
    Torch-Pruning's rule); ValueError when a ratio would empty its layer."""
    kept = {}
    for name, r in ratios.items():
        n = sizes[name]
        kept[name] = _kept(n, _check_ratio(r, f"ratio of layer {name!r}"))
        if kept[name] < 1:
            raise ValueError(f"ratio {r} would remove all {n} channels of layer {name!r}")
    return kept


def kept_global(scores: Mapping[str, torch.Tensor], ratio: float) -> dict[str, int]:
    """Allocation "global": channels kept per layer when ``ratio`` of all channels go under one
    threshold over the concatenated scores.  Ties at the threshold go to the earlier layer (the
    order of ``scores``); a layer is never emptied (it keeps its best channel, so the total removed
    can fall slightly short of ``ratio``)."""
    names = list(scores)
    sizes = [len(scores[n]) for n in names]
    flat = torch.cat([_as_scores(scores[n]) for n in names]) if names else torch.zeros(0)
    total = len(flat)
    k = total - _kept(total, _check_ratio(ratio, "ratio"))
    if k == 0:
        return dict(zip(names, sizes))
    owner = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    removed = torch.bincount(owner[torch.argsort(flat, stable=True)[:k]], minlength=len(names)).tolist()
    return {n: s - min(c, s - 1) for n, s, c in zip(names, sizes, removed)}


def allocate(scores: Mapping[str, torch.Tensor], *, ratios: Mapping[str, float] | None = None,
             ratio: float | None = None, kept: Mapping[str, int] | None = None) -> dict[str, list[int]]:
    """The channels to remove, ``{layer: sorted indices}`` (layers that lose none are left out),
    from each layer's scores (1-D, higher = kept) and exactly one of: ``ratios`` (allocation
    "layer", layer -> ratio, layers not named keep all), ``ratio`` (allocation "global", see
    ``kept_global``) or ``kept`` (exact counts, layer -> channels kept).  In each layer the lowest
    scores go (``torch.topk(largest=False)``, the selection Torch-Pruning's pruners make)."""
    if sum(x is not None for x in (ratios, ratio, kept)) != 1:
        raise TypeError("allocate takes exactly one of ratios=, ratio=, kept=")
    scores = {n: _as_scores(s) for n, s in scores.items()}
    sizes = {n: len(s) for n, s in scores.items()}
    if ratio is not None:
        kept = kept_global(scores, ratio)
    elif ratios is not None:
        unknown = [n for n in ratios if n not in scores]
        if unknown:
            raise ValueError(f"ratios name layers without scores: {unknown}")
        kept = kept_per_layer(sizes, ratios)
    remove = {}
    for name, k in kept.items():
        if name not in scores:
            raise ValueError(f"kept names a layer without scores: {name!r}")
        n = sizes[name]
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n:
            raise ValueError(f"layer {name!r} has {n} channels; cannot keep {k!r}")
        if k < n:
            remove[name] = sorted(torch.topk(scores[name], n - k, largest=False).indices.tolist())
    return remove


def _as_scores(s: Any) -> torch.Tensor:
    if not torch.is_tensor(s) or s.dim() != 1:
        raise ValueError(f"channel scores must be a 1-D tensor, got {getattr(s, 'shape', type(s).__name__)}")
    return s.detach().float().cpu()


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------

def _why_not(name: str, modules: Mapping[str, nn.Module], prunable: list[str], method: PruningMethod) -> str:
    if name not in modules or not isinstance(modules[name], _PARAM_LAYERS):
        return "does not exist"
    if name in prunable:  # prunable, yet not a candidate of this method
        return f"has no BatchNorm after it ({method.name} needs one)"
    return "is not prunable (classifier, or its output feeds a residual sum)"


def _layer_ratios(model: nn.Module, spec: StructuredSpec, candidates: list[str], prunable: list[str],
                  method: PruningMethod) -> dict[str, float]:
    modules = dict(model.named_modules())
    if spec.preset is not None:
        ratios = {n: 0.0 for n in candidates}
        preset = preset_layer_ratios(spec.preset, model)
        unfit = [n for n in preset if n not in candidates]
        if unfit:
            raise ValueError(f"preset {spec.preset!r} does not fit this model ({type(model).__name__}): "
                             f"layer(s) {unfit} are not prunable")
        ratios.update(preset)
    else:
        ratios = {n: spec.ratio for n in candidates}
    for name, r in (spec.layer_ratios or {}).items():
        if name not in candidates:
            raise ValueError(f"layer_ratios: layer {name!r} {_why_not(name, modules, prunable, method)}; "
                             f"prunable layers: {candidates}")
        ratios[name] = r
    return ratios


def _exact_counts(model: nn.Module, spec: StructuredSpec, candidates: list[str], prunable: list[str],
                  method: PruningMethod) -> dict[str, int]:
    modules = dict(model.named_modules())
    kept = {}
    for name, k in spec.counts.items():
        n = _out_channels(modules[name]) if isinstance(modules.get(name), _PARAM_LAYERS) else None
        if n is None or (k < n and name not in candidates):
            raise ValueError(f"counts: layer {name!r} {_why_not(name, modules, prunable, method)}; "
                             f"prunable layers: {candidates}")
        if k > n:
            raise ValueError(f"counts: layer {name!r} has {n} channels; cannot keep {k}")
        if k < n:
            kept[name] = int(k)
    return kept


def _scores(method: PruningMethod, layers: list[str], modules: Mapping[str, nn.Module], analysis: _Analysis,
            spec: StructuredSpec, model: nn.Module) -> dict[str, torch.Tensor]:
    """Each layer's channel scores by ``method``, all computed before anything is pruned."""
    score = score_function(method)
    out = {}
    with torch.no_grad():
        for name in layers:
            bn = analysis.bn_of.get(name)
            s = score(modules[name], LayerContext(name, modules[bn] if bn else None, spec.seed, model))
            n = _out_channels(modules[name])
            if not torch.is_tensor(s) or tuple(s.shape) != (n,) or not torch.isfinite(s).all():
                raise ValueError(f"pruning method {method.name!r}: the scores of layer {name!r} must be a finite "
                                 f"tensor of shape ({n},), got {getattr(s, 'shape', type(s).__name__)}")
            out[name] = s
    return out


def _channels_to_remove(work: nn.Module, spec: StructuredSpec, analysis: _Analysis) -> dict[str, list[int]]:
    method = _structured_method(spec.method)
    modules = dict(work.named_modules())
    candidates = analysis.prunable
    if method.needs_batchnorm:
        candidates = [n for n in candidates
                      if (b := analysis.bn_of.get(n)) is not None and modules[b].weight is not None]
        if not candidates:
            raise ValueError(f"{method.name} needs a BatchNorm (with affine weights) after the prunable layers; "
                             f"{type(work).__name__} has none")
    if spec.counts is not None:
        kept = _exact_counts(work, spec, candidates, analysis.prunable, method)
    elif method.allocation == "layer":
        sizes = {n: _out_channels(modules[n]) for n in candidates}
        ratios = _layer_ratios(work, spec, candidates, analysis.prunable, method)
        kept = {n: k for n, k in kept_per_layer(sizes, ratios).items() if k < sizes[n]}
    else:  # "global": every candidate is scored; the threshold decides
        return allocate(_scores(method, candidates, modules, analysis, spec, work), ratio=spec.ratio)
    return allocate(_scores(method, list(kept), modules, analysis, spec, work), kept=kept)


def _remove_channels(dg: tp.DependencyGraph, modules: Mapping[str, nn.Module], remove: Mapping[str, list[int]]) -> None:
    """Remove exactly ``remove[layer]`` (output-channel indices) of each layer, with everything the
    dependency graph couples to them (BatchNorm entries, the next layers' input slices)."""
    for name, idxs in remove.items():
        m = modules[name]
        group = dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels, list(idxs))
        if not dg.check_pruning_group(group):
            raise ValueError(f"removing {len(idxs)} channels of layer {name!r} would empty a layer")
        group.prune()


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
    remove = _channels_to_remove(work, spec, analysis)
    expected = {n: c - len(remove.get(n, ())) for n, c in channel_counts(work).items()}
    _remove_channels(analysis.dg, modules, remove)
    got = channel_counts(work)
    wrong = {n: (expected[n], got[n]) for n in expected if got[n] != expected[n]}
    if wrong:  # guards against a silent change of the library's grouping
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


def bn_scale_names(model: nn.Module) -> list[str]:
    """The parameter names of the BatchNorm scales (gamma) that slimming's L1 penalty acts on."""
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, _BN) and m.weight is not None]


def _bn_scales(model: nn.Module) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    return [params[n] for n in bn_scale_names(model)]


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
        for name, n in want.items():  # the current count: a coupled group may have shrunk it already
            current = _out_channels(modules[name])
            if n < current:
                _remove_channels(dg, modules, {name: list(range(n, current))})
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
