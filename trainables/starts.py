"""Where each retraining regime's final sparse network starts: one function per regime.

A start function turns (pipeline, trial LR, trial seed, IMP round) into a ``Start``: the initial
weights and mask (or a pruned network), the artifacts they came from and the training stages that
produced them.  What else a regime carries (its label, what it needs, its contrasts) is its entry in
``trainables.regimes``; a new regime is one such function plus one ``register_regime`` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainables.artifacts import Artifact
from trainables.pipeline import ImpResult, Pipeline, derive_seed
from trainables.records import StageRun
from trainables.pruning import random_masks_like, sparsity


@dataclass
class Start:
    weights: dict[str, torch.Tensor] | None  # None when the pipeline diverged before a mask existed
    masks: dict[str, torch.Tensor] | None
    stages: list[StageRun]
    artifacts: dict[str, str]
    seeds: dict[str, int] = field(default_factory=dict)
    diverged_stage: str | None = None
    model: nn.Module | None = None  # a structured-pruned network (its weights in it), else build one
    train: dict[str, Any] = field(default_factory=dict)  # the regime's own TrainSpec changes (epochs, schedule)
    efficiency: dict[str, Any] = field(default_factory=dict)  # params, FLOPs, latency: dense and pruned

    @property
    def ready(self) -> bool:
        return self.weights is not None or self.model is not None

    @property
    def sparsity(self) -> tuple[float, dict[str, float]]:
        if self.masks:
            return sparsity(self.masks)
        if self.efficiency.get("dense_params"):  # structured: the share of parameters removed
            return 1.0 - self.efficiency["params"] / self.efficiency["dense_params"], {}
        return 0.0, {}


def on_imp_mask(imp: ImpResult, weights_from, seeds: dict[str, int] | None, prune_round: int) -> Start:
    """The start point on the mask of IMP round ``prune_round``; none if IMP diverged before it."""
    arts = {"init": imp.theta0.name, "pretrained": imp.pretrained.name}
    r = prune_round
    if r < 1 or r > len(imp.masks):
        return Start(None, None, imp.stages, arts, seeds or {}, diverged_stage=imp.stages[-1].name)
    mask = imp.masks[r - 1]
    arts["mask"] = mask.name
    arts["rewind"] = imp.rewind.name
    weights, extra = weights_from(imp)
    arts.update(extra)
    # the stages that led to this mask: pretraining and the rounds before r
    return Start(weights, mask.tensors(), imp.stages[:r], arts, seeds or {})


def winning_ticket(p: Pipeline, lr: float, seed: int, prune_round: int) -> Start:
    """theta_0 * m: the survivors reset to their original initial values."""
    return on_imp_mask(p.imp(lr, seed), lambda imp: (imp.theta0.tensors(), {}), None, prune_round)


def random_reinit(p: Pipeline, lr: float, seed: int, prune_round: int) -> Start:
    """A fresh seeded draw from the same initialiser, same mask as the winning ticket."""
    reinit_seed = derive_seed(seed, "random_reinit")

    def weights(imp: ImpResult):
        art = p.init(reinit_seed)
        return art.tensors(), {"reinit": art.name}
    return on_imp_mask(p.imp(lr, seed), weights, {"reinit_seed": reinit_seed}, prune_round)


def late_rewind(p: Pipeline, lr: float, seed: int, prune_round: int) -> Start:
    """theta_k * m, with IMP itself rewinding to epoch k (Frankle et al., 2019)."""
    k = p.cfg.pruning.rewind_epoch
    return on_imp_mask(p.imp(lr, seed, rewind_epoch=k), lambda imp: (imp.rewind.tensors(), {}), None, prune_round)


# -- the rethinking regimes (Liu et al., 2019): what to do with a pruned network ----------------
# Each works on a magnitude mask (the IMP of the pipeline, the round given) and on a structured-pruned
# network whose channels are gone (``--method l1-filter`` / ``slimming``) alike.

@dataclass
class Pruned:
    """The pruned network a rethinking regime starts from: a mask or a smaller architecture."""

    theta0: Artifact
    trained: Artifact | None  # theta_E: the trained weights the pruning chose from
    stages: list[StageRun]
    artifacts: dict[str, str]
    mask: Artifact | None = None  # method "magnitude"
    arch: Artifact | None = None  # structured methods
    diverged_stage: str | None = None


def pruned_network(p: Pipeline, lr: float, seed: int, prune_round: int | None = None) -> Pruned:
    cfg = p.cfg.pruning
    if not cfg.structured:
        imp = p.imp(lr, seed)
        r = prune_round or cfg.rounds
        arts = {"init": imp.theta0.name, "pretrained": imp.pretrained.name}
        if r < 1 or r > len(imp.masks):
            return Pruned(imp.theta0, None, imp.stages, arts, diverged_stage=imp.stages[-1].name)
        arts.update(mask=imp.masks[r - 1].name, trained=imp.trained[r - 1].name)
        return Pruned(imp.theta0, imp.trained[r - 1], imp.stages[:r], arts, mask=imp.masks[r - 1])
    (theta0,), (dense,) = p.pretrain_many(lr, [seed])
    stages = [StageRun("pretrain", dense.name, tuple(dense.meta["history"]), 0.0)]
    arts = {"init": theta0.name, "pretrained": dense.name}
    if dense.meta["diverged"]:
        return Pruned(theta0, None, stages, arts, diverged_stage="pretrain")
    arch = p.prune_channels(dense, cfg.method)
    arts["arch"] = arch.name
    return Pruned(theta0, dense, stages, arts, arch=arch)


def _begin(p: Pipeline, pr: Pruned, weights: str, seeds: dict[str, int], train: dict[str, Any]) -> Start:
    """The regime's start on ``pr``: ``weights`` "trained" (theta_E), or "reinit" (a fresh draw,
    seed ``seeds['reinit_seed']``) on the pruned network."""
    if pr.trained is None:
        return Start(None, None, pr.stages, pr.artifacts, seeds, diverged_stage=pr.diverged_stage)
    if pr.mask is not None:
        masks = pr.mask.tensors()
        arts = dict(pr.artifacts)
        if weights == "trained":
            w = pr.trained.tensors()
        else:
            art = p.init(seeds["reinit_seed"])
            w, arts["reinit"] = art.tensors(), art.name
        return Start(w, masks, pr.stages, arts, seeds, train=train, efficiency=p.mask_efficiency(pr.mask))
    from trainables.structured import reinitialise
    model = p.restore(pr.arch)
    if weights == "reinit":
        model = reinitialise(model, seeds["reinit_seed"])
    return Start(None, None, pr.stages, pr.artifacts, seeds, model=model, train=train,
                 efficiency=pr.arch.meta["efficiency"])


def fine_tune(p: Pipeline, lr: float, seed: int, prune_round: int) -> Start:
    """theta_E on the pruned network, fine-tuned at a small constant LR for F epochs."""
    epochs = p.cfg.pruning.fine_tune_epochs or p.cfg.training.epochs
    return _begin(p, pruned_network(p, lr, seed, prune_round), "trained", {},
                  {"epochs": epochs, "schedule": "constant", "warmup_epochs": 0})


def lr_rewind(p: Pipeline, lr: float, seed: int, prune_round: int) -> Start:
    """theta_E on the pruned network, retrained with the original LR schedule replayed (Renda et al., 2020)."""
    return _begin(p, pruned_network(p, lr, seed, prune_round), "trained", {}, {})


def scratch_e(p: Pipeline, lr: float, seed: int, prune_round: int) -> Start:
    """The pruned network from a fresh random initialisation, trained for the dense network's E epochs."""
    reinit = derive_seed(seed, "scratch")
    return _begin(p, pruned_network(p, lr, seed, prune_round), "reinit", {"reinit_seed": reinit}, {})


def scratch_b_epochs(epochs: int, dense_flops: float, pruned_flops: float, cap: float) -> int:
    """Scratch-B's budget: as many FLOPs of training as the dense network's E epochs, i.e.
    E * FLOPs(dense) / FLOPs(pruned), at most ``cap`` * E (and never fewer than E)."""
    ratio = min(cap, dense_flops / pruned_flops) if pruned_flops > 0 else cap
    return max(epochs, int(round(epochs * ratio)))


def scratch_b(p: Pipeline, lr: float, seed: int, prune_round: int) -> Start:
    """As scratch_e (the same fresh draw), for E * FLOPs(dense)/FLOPs(pruned) epochs (capped)."""
    start = scratch_e(p, lr, seed, prune_round)
    eff = start.efficiency
    if start.ready:
        start.train = {"epochs": scratch_b_epochs(p.cfg.training.epochs, eff["dense_flops"], eff["flops"],
                                                 p.cfg.pruning.scratch_b_cap)}
    return start


def random_prune(p: Pipeline, lr: float, seed: int, prune_round: int) -> Start:
    """The control: a random pruning of theta_0 with the same per-layer survivors (weights) or
    channels as the method's, trained for E epochs."""
    pr = pruned_network(p, lr, seed, prune_round)
    rseed = derive_seed(seed, "random_prune")
    seeds = {"random_prune_seed": rseed}
    if pr.trained is None:
        return Start(None, None, pr.stages, pr.artifacts, seeds, diverged_stage=pr.diverged_stage)
    if pr.mask is not None:
        masks = random_masks_like(pr.mask.tensors(), rseed)  # the same survivors per layer: same efficiency
        return Start(pr.theta0.tensors(), masks, pr.stages, pr.artifacts, seeds, efficiency=p.mask_efficiency(pr.mask))
    arch = p.prune_channels(pr.theta0, "random-channel", rseed, counts=pr.arch.meta["channels"])
    return Start(None, None, pr.stages, {**pr.artifacts, "random_arch": arch.name}, seeds,
                 model=p.restore(arch), efficiency=arch.meta["efficiency"])
