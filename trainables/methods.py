"""The pruning-method registry: each method is one scoring function plus one entry here.

A scoring function says how important each weight (unstructured) or each output channel
(structured) is; higher scores are kept.  How many go from each layer is a separate axis, the
method's ``allocation``, shared by every method (``trainables.structured.allocate``; unstructured
methods take the study's ``--prune-scope``).  Signatures:

* unstructured: ``score(weight: Tensor) -> Tensor`` of the same shape, non-negative (the selection
  is ``torch.nn.utils.prune``'s, which ranks by ``|score|``);
* structured: ``score(layer: nn.Module, ctx: LayerContext) -> Tensor`` of shape
  ``[out_channels]``, ``ctx`` giving the layer's name, the BatchNorm on its output channels (or
  None), the spec's seed and the whole model.

A new method is one function and one ``register_method(PruningMethod(...))`` call in any module;
``score`` may be the function or a ``"module:function"`` string resolved on first use, so this
module imports no torch.  See docs/pruning.md.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ALLOCATIONS = {
    "scope": "unstructured: the study's --prune-scope (global: one threshold; layerwise: each layer alike)",
    "layer": "structured: each layer its own ratio (--prune-ratio, --layer-ratios, --preset), "
             "kept = floor(n * (1 - ratio))",
    "global": "structured: one threshold over all layers' scores (--prune-ratio of all channels), "
              "a layer never emptied",
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class LayerContext:
    """What a structured scoring function may need besides the layer itself."""
    name: str             # the layer's name in ``model.named_modules()``
    batchnorm: Any        # the BatchNorm on the layer's output channels, or None
    seed: int             # ``StructuredSpec.seed`` (the random control's draw)
    model: Any            # the (working copy of the) whole model; do not modify it


@dataclass(frozen=True)
class PruningMethod:
    """One pruning method (fields are checked on construction; ValueError when one is bad)."""
    name: str                    # the --method value
    score: Callable[..., Any] | str  # the scoring function, or "module:function" resolved on first use
    structured: bool             # False: weight masks (IMP); True: output channels physically removed
    allocation: str              # how scores become per-layer counts: a key of ALLOCATIONS
    help: str                    # one line for --help
    needs_batchnorm: bool = False  # scores come from the BatchNorm after each layer (layers without one are not pruned)
    bn_penalty: bool = False       # pretraining adds --slimming-penalty's L1 on BatchNorm scales
    selectable: bool = True        # False: not a --method choice (the random-channel control)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"pruning method name must be lower-case letters, digits, '-' or '_', got {self.name!r}")
        if isinstance(self.score, str):
            if not _TARGET.fullmatch(self.score):
                raise ValueError(f"pruning method {self.name!r}: score must be a function or 'module:function', "
                                 f"got {self.score!r}")
        elif not callable(self.score):
            raise ValueError(f"pruning method {self.name!r}: score must be a function or "  # noqa: TRY004 - one error type for a bad field
                             f"'module:function', got {type(self.score).__name__}")
        for flag in ("structured", "needs_batchnorm", "bn_penalty", "selectable"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"pruning method {self.name!r}: {flag} must be True or False, "  # noqa: TRY004
                                 f"got {getattr(self, flag)!r}")
        allowed = ("layer", "global") if self.structured else ("scope",)
        if self.allocation not in allowed:
            kind = "a structured" if self.structured else "an unstructured"
            raise ValueError(f"pruning method {self.name!r}: allocation of {kind} method must be one of "
                             f"{', '.join(allowed)}, got {self.allocation!r}")
        if self.needs_batchnorm and not self.structured:
            raise ValueError(f"pruning method {self.name!r}: needs_batchnorm applies to structured methods only")
        if not isinstance(self.help, str) or not self.help.strip() or "\n" in self.help:
            raise ValueError(f"pruning method {self.name!r}: help must be one non-empty line")


class UnknownMethodError(KeyError, ValueError):
    """No method of that name (a KeyError, and a ValueError for callers validating input)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


METHODS: dict[str, PruningMethod] = {}


def register_method(method: PruningMethod) -> PruningMethod:
    """Add ``method`` to ``METHODS`` (ValueError if its name is taken); returns it."""
    if not isinstance(method, PruningMethod):
        raise ValueError(f"register_method takes a PruningMethod, got {type(method).__name__}")  # noqa: TRY004
    if method.name in METHODS:
        raise ValueError(f"a pruning method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str | PruningMethod) -> PruningMethod:
    """The registered method ``name`` (UnknownMethodError, a KeyError, listing the known names)."""
    if isinstance(name, PruningMethod):
        return name
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise UnknownMethodError(f"unknown pruning method {name!r}; known: {', '.join(METHODS)}") from None


def score_function(method: str | PruningMethod) -> Callable[..., Any]:
    """The method's scoring function, importing ``"module:function"`` on first use."""
    method = get_method(method)
    if callable(method.score):
        return method.score
    module, _, attr = method.score.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"pruning method {method.name!r}: cannot load its score {method.score!r} ({e})") from e
    if not callable(fn):
        raise TypeError(f"pruning method {method.name!r}: {method.score!r} is not a function")
    return fn


def selectable() -> tuple[str, ...]:
    """The --method choices, in registry order."""
    return tuple(n for n, m in METHODS.items() if m.selectable)


for _m in (
    PruningMethod("magnitude", "trainables.pruning:magnitude_score", structured=False, allocation="scope",
                  help="weight masks by IMP, the smallest |w| go (--prune-scope: global or layerwise)"),
    PruningMethod("l1-filter", "trainables.structured:l1_filter_score", structured=True, allocation="layer",
                  help="remove each conv's filters of smallest L1 norm (Li et al. 2017)"),
    PruningMethod("slimming", "trainables.structured:bn_scale_score", structured=True, allocation="global",
                  help="pretrain with an L1 penalty on BatchNorm scales, remove the channels of smallest "
                       "|gamma| under one global threshold (Liu et al. 2017)",
                  needs_batchnorm=True, bn_penalty=True),
    PruningMethod("random-channel", "trainables.structured:random_channel_score", structured=True,
                  allocation="layer", help="control: random channels, seeded per (seed, layer name)",
                  selectable=False),
):
    register_method(_m)
del _m
