"""Unstructured pruning masks: global (one threshold) or layerwise, applied round after round.

The weights are scored by the pruning method's function (``trainables.methods``; magnitude:
``|w|``) and the masks selected by ``torch.nn.utils.prune`` (L1Unstructured through
``global_unstructured`` or ``l1_unstructured`` with ``importance_scores``): its PruningContainer
already prunes ``amount`` of the weights *still alive* when a mask exists, which is exactly one IMP
round.  Training then holds the masks as plain tensors (see ``trainables.training``) instead of the
library's forward pre-hooks: the hooks cost a few percent per step and leave non-zero values in
``weight_orig``, while a multiply after each optimiser step keeps the pruned weights exactly zero.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import prune

from trainables.config import SCOPES  # the study's --prune-scope: the allocation of unstructured methods
from trainables.methods import get_method, score_function
from trainables.models import prunable_layers



def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """The ``magnitude`` method's score: ``|w|`` (IMP, Frankle & Carbin 2019)."""
    return weight.abs()


def select_layers(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The layers to prune: every Linear/Conv by default, else exactly ``names`` (each must exist)."""
    layers = prunable_layers(model)
    if names is None:
        return layers
    names = list(names)
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise KeyError(f"unknown prunable layer(s) {unknown}; the model has {sorted(layers)}")
    return {n: layers[n] for n in names}


def full_masks(model: nn.Module, layer_names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """All-ones masks keyed by parameter name (``<layer>.weight``)."""
    return {f"{n}.weight": torch.ones_like(m.weight, dtype=torch.float32)
            for n, m in select_layers(model, layer_names).items()}


def prune_round(model: nn.Module, masks: dict[str, torch.Tensor], fraction: float,
                scope: str = "global", method: str = "magnitude") -> dict[str, torch.Tensor]:
    """Remove ``fraction`` of the weights still alive under ``masks``, lowest ``method`` score first
    (magnitude: smallest |w|), over all layers at once (``scope`` "global") or in each layer alike.

    ``model`` holds the trained weights the scores come from; it is not modified.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; known: {SCOPES}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    spec = get_method(method)
    if spec.structured:
        raise ValueError(f"{spec.name} is a structured method (trainables.structured); prune_round makes weight masks")
    score = score_function(spec)
    work = copy.deepcopy(model).cpu()  # deep copy before any pruning hook exists (pytorch#37322)
    modules = dict(work.named_modules())
    targets, scores = [], []
    for pname, mask in masks.items():
        layer = modules[pname.rsplit(".", 1)[0]]
        with torch.no_grad():
            s = score(layer.weight.detach())
        if not torch.is_tensor(s) or s.shape != layer.weight.shape or not bool((s >= 0).all()):
            raise ValueError(f"pruning method {spec.name!r}: the scores of {pname!r} must be a non-negative tensor "
                             f"of shape {tuple(layer.weight.shape)} (the library ranks by |score|), "
                             f"got {getattr(s, 'shape', type(s).__name__)}")
        prune.custom_from_mask(layer, "weight", mask.detach().cpu().bool())
        targets.append(layer)
        scores.append(s)
    if scope == "global":
        prune.global_unstructured([(t, "weight") for t in targets], prune.L1Unstructured, amount=fraction,
                                  importance_scores={(t, "weight"): s for t, s in zip(targets, scores)})
    else:
        for t, s in zip(targets, scores):
            prune.l1_unstructured(t, "weight", amount=fraction, importance_scores=s)
    return {pname: t.weight_mask.detach().clone().float() for pname, t in zip(masks, targets)}


def random_masks_like(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random masks with the same per-layer number of survivors (the random-pruning control)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in masks.items():
        keep = int(m.sum().item())
        flat = torch.zeros(m.numel())
        flat[torch.randperm(m.numel(), generator=g)[:keep]] = 1.0
        out[name] = flat.view_as(m)
    return out


def sparsity(masks: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """(overall, per layer) fraction of masked weights that are pruned."""
    per = {n: 1.0 - float(m.sum()) / m.numel() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    alive = sum(float(m.sum()) for m in masks.values())
    return (1.0 - alive / total if total else 0.0), per


def per_round_fraction(target_sparsity: float, rounds: int) -> float:
    """Fraction p of the surviving weights to remove per round so that R rounds reach the target."""
    return 1.0 - (1.0 - target_sparsity) ** (1.0 / rounds)

