"""Parameter, FLOP and latency measurements for dense and mask-pruned models.

FLOP convention: :func:`count_flops` uses ``torch.utils.flop_counter.FlopCounterMode``, which counts
a multiply-add as **2 FLOPs** (a matmul of (m, k) x (k, n) is ``2*m*n*k``; a convolution is
``2 * output elements * in_channels/groups * kernel area``).  Only matmul/conv-like ops have a
formula: bias additions, BatchNorm, activations, pooling and the option-A shortcut count 0.
Li et al. 2017 ("Pruning Filters for Efficient ConvNets", whose VGG-16/ResNet-56/110 figures the
Rethinking paper starts from) count multiply-adds of conv and linear layers, so compare those
against :func:`count_macs` (= ``count_flops // 2``).  Not every paper does: network slimming (Liu et al.
2017) reports VGG-19 at 7.97e8 FLOPs, i.e. 2 per multiply-add like ``count_flops``, and the
Rethinking code's ``compute_flops.py`` also counts 2 per multiply-add plus BatchNorm, ReLU and
pooling.  Ratios (Scratch-B budgets) are unaffected as long as one convention is used throughout.

All counts are for ONE example (a batch of 1), with the model in eval mode and no autograd.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_params(model: nn.Module) -> int:
    """Number of all parameters (weights, biases, BatchNorm affine terms); buffers excluded."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> int:
    """Parameters that survive pruning.

    With ``masks`` (``{param_name: 0/1 tensor}``, e.g. ``{"features.0.weight": mask}``): every
    masked parameter contributes its number of ones, every unmasked parameter all its entries.
    Without masks: the number of non-zero parameter values.
    """
    if masks is None:
        return sum(int(torch.count_nonzero(p.detach()).item()) for p in model.parameters())
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise KeyError(f"masks name unknown parameters {unknown}")
    return sum(int((masks[n] != 0).sum().item()) if n in masks else p.numel() for n, p in params.items())


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _flop_counts(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per module name as in ``model.named_modules()``) for one example."""
    x = torch.zeros(1, *input_shape, device=_device_of(model))
    with _eval_mode(model), torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    counts = counter.get_flop_counts()
    # FlopCounterMode keys modules as "<RootClassName>.<child>.<grandchild>" (torch's
    # ModuleTracker naming); strip the root's class name to get named_modules() names.
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for key, ops in counts.items():
        if key == "Global":
            continue
        if key == root:
            name = ""
        elif key.startswith(root + "."):
            name = key[len(root) + 1:]
        else:
            continue
        per_module[name] = sum(ops.values())
    return sum(counts.get("Global", {}).values()), per_module


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs of one example (batch of 1, eval mode, no grad) by ``FlopCounterMode``.

    Convention: a multiply-add counts as 2 FLOPs (see the module docstring); published
    multiply-add ("FLOPs") tables correspond to :func:`count_macs`.
    """
    return _flop_counts(model, tuple(input_shape))[0]


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward example: ``count_flops // 2`` (the convention of
    Li et al. 2017 and the Rethinking paper's FLOPs columns)."""
    return count_flops(model, input_shape) // 2


def _mask_layer(name: str, modules: Mapping[str, nn.Module]) -> str | None:
    """The layer a mask key belongs to, if it masks that layer's weight (``<layer>.weight``); None
    for other params."""
    layer, _, pname = name.rpartition(".")
    if pname == "weight" and layer in modules:
        return layer
    return None


def masked_flops(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 per multiply-add) of one example through an unstructured, mask-pruned network.

    Each conv/linear layer's FLOPs are scaled by its weight mask's density (kept / total);
    everything else is counted as dense.  Written by hand because ``FlopCounterMode`` is
    shape-based: it counts the dense operation whatever the weights hold, so zeros (masked weights)
    cost the same as non-zeros.  The per-layer numbers come from its per-module breakdown
    (``get_flop_counts()``).  For a conv every weight is used at every output position, so
    scaling by weight density is exact for an ideal sparse kernel; for a linear layer likewise.
    Masks on parameters other than a layer's weight (e.g. biases) are ignored: biases cost 0 here.
    """
    return _masked(model, masks, *_flop_counts(model, tuple(input_shape)))


def _masked(model: nn.Module, masks: Mapping[str, torch.Tensor], total: int, per_module: dict[str, int]) -> int:
    """``total`` less the FLOPs of each masked layer's pruned share (see ``masked_flops``)."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    removed = 0.0
    for key, mask in masks.items():
        layer = _mask_layer(key, modules)
        if layer is None:
            if key not in params:
                raise KeyError(f"mask {key!r} names no parameter of the model")
            continue
        if not isinstance(modules[layer], _PRUNABLE):
            continue
        density = float((mask != 0).sum().item()) / max(mask.numel(), 1)
        removed += per_module.get(layer, 0) * (1.0 - density)
    return round(total - removed)


def latency_ms(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 256, device: str = "cpu",
               repeats: int = 10, warmup: int = 2) -> dict:
    """Inference latency per batch: median and 90th percentile in milliseconds.

    The model is moved to ``device`` (and back afterwards), put in eval mode under
    ``torch.inference_mode``; CUDA is synchronised around every timed forward.  The number of
    threads is left as it is (reported as ``threads``).  Defaults (10 timed runs after 2 warm-up
    runs) keep it well under a second for small models; raise ``repeats`` for reported numbers.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    dev = torch.device(device)
    original = _device_of(model)
    model.to(dev)
    cuda = dev.type == "cuda"
    times: list[float] = []
    try:
        x = torch.randn(batch_size, *input_shape, device=dev)
        with _eval_mode(model), torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                if cuda:
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                model(x)
                if cuda:
                    torch.cuda.synchronize(dev)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.to(original)
    ordered = sorted(times)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest-rank percentile
    return {"median_ms": statistics.median(times), "p90_ms": p90, "batch_size": batch_size,
            "device": str(dev), "repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads()}


def summary(model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Params, surviving params, FLOPs and MACs for one example (masked if ``masks`` given).

    ``nonzero_params`` counts mask survivors with masks, non-zero values without;
    ``dense_flops`` is the unmasked count for reference.
    """
    dense, per_module = _flop_counts(model, tuple(input_shape))  # one counted forward pass
    flops = _masked(model, masks, dense, per_module) if masks is not None else dense
    return {"params": count_params(model), "nonzero_params": count_nonzero_params(model, masks),
            "flops": flops, "macs": flops // 2, "dense_flops": dense}
