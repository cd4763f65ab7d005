"""The pipeline's stages as artifacts: theta_0, trained weights (to epoch k or E), IMP masks.

Every stage is keyed by the fields that determine it (see ``trainables.artifacts``), so a
winning-ticket trial and a random-re-init trial with the same LR and seed share one IMP run, and
late rewinding reuses the pretraining's first k epochs only through its own, equally cached, run.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from trainables.artifacts import Artifact, ArtifactStore, save_tensors
from trainables.data import Splits, load_splits
from trainables.config import PipelineConfig
from trainables.methods import get_method
from trainables.models import INIT_SCHEME, build_model, init_weights
from trainables.records import StageRun
from trainables.pruning import full_masks, per_round_fraction, prune_round, sparsity
from trainables.stacked import train_all
from trainables.training import TrainSpec


def efficiency(dense: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], device: torch.device,
               masks: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Parameters, FLOPs per example and median inference latency (batch of 256) of the dense and
    the pruned network.  A masked network (``masks``) counts only surviving weights and their FLOPs,
    but runs at the dense network's speed: zeros in a dense kernel cost the same."""
    from trainables import efficiency as eff
    dense_latency = eff.latency_ms(dense, input_shape, device=str(device))["median_ms"]
    d = eff.summary(dense, input_shape, masks)
    if masks is not None:
        return {"params": d["nonzero_params"], "dense_params": d["params"], "flops": d["flops"],
                "dense_flops": d["dense_flops"], "latency_ms": dense_latency, "dense_latency_ms": dense_latency}
    s = eff.summary(pruned, input_shape)
    return {"params": s["params"], "dense_params": d["params"], "flops": s["flops"], "dense_flops": d["flops"],
            "latency_ms": eff.latency_ms(pruned, input_shape, device=str(device))["median_ms"],
            "dense_latency_ms": dense_latency}


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for ``purpose`` derived from the trial seed (recorded with the trial)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class Pipeline:
    cfg: PipelineConfig
    store: ArtifactStore
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @functools.cached_property
    def splits(self) -> Splits:
        d = self.cfg.data
        s = load_splits(d.dataset, d.data_dir, d.data_seed, d.val_fraction, d.data_seed)
        if d.train_subset:  # the split is already shuffled: its first N examples are a random subset
            s = replace(s, x_train=s.x_train[:d.train_subset], y_train=s.y_train[:d.train_subset])
        return s.to(self.device)

    def train_spec(self, lr: float, seed: int) -> TrainSpec:
        """A training run of the study's schedule (a regime may change its epochs and schedule)."""
        t = self.cfg.training
        return TrainSpec(lr=lr, epochs=t.epochs, batch_size=t.batch_size, momentum=t.momentum,
                         weight_decay=t.weight_decay, schedule=t.schedule, warmup_epochs=t.warmup_epochs, seed=seed)

    def pretrain_spec(self, trial_lr: float, seed: int) -> TrainSpec:
        """Pretraining and IMP rounds: a method with a sparsity penalty (slimming) adds its L1 on BN scales."""
        spec = self.train_spec(self.cfg.training.pretrain_lr_for(trial_lr), seed)
        p = self.cfg.pruning
        return replace(spec, bn_l1=p.slimming_penalty) if get_method(p.method).bn_penalty else spec

    def model_spec(self) -> dict[str, Any]:
        """What determines an initialisation besides its seed (artifact keys)."""
        m = self.cfg.model
        return {"model": m.model, "widths": list(m.widths) if m.widths else None, "init": INIT_SCHEME,
                **self.cfg.data.spec()}

    def new_model(self) -> nn.Module:
        s = self.splits
        return build_model(self.cfg.model.model, s.input_shape, s.num_classes, self.cfg.model.widths).to(self.device)

    # -- stages --------------------------------------------------------------------------------
    def init(self, seed: int) -> Artifact:
        """theta_0 (or a random re-initialisation): a seeded draw from the model's initialiser."""
        def compute(tmp):
            model = init_weights(build_model(self.cfg.model.model, self.splits.input_shape,
                                             self.splits.num_classes, self.cfg.model.widths), seed)
            save_tensors(tmp, model.state_dict())
            return {"seed": seed}
        return self.store.get_or_create("init", {**self.model_spec(), "seed": seed}, compute)

    def train(self, start: Artifact, mask: Artifact | None, spec: TrainSpec, stop_epoch: int) -> Artifact:
        """Weights after ``stop_epoch`` epochs of ``spec``'s schedule from ``start`` under ``mask``."""
        return self.train_many([start], [mask], [spec], stop_epoch)[0]

    def train_many(self, starts: list[Artifact], masks: list[Artifact | None], specs: list[TrainSpec],
                   stop_epoch: int) -> list[Artifact]:
        """``train`` for several networks (the seeds of one configuration): those not in the store
        train together as one stacked network where they can and it pays (``trainables.stacked``),
        else one after another; each is its own artifact, under the key it has when trained alone."""
        def compute(todo: list[int], tmps) -> list[dict[str, Any]]:
            models = []
            for i in todo:
                models.append(self.new_model())
                models[-1].load_state_dict(starts[i].tensors())
            held = [masks[i].tensors() if masks[i] is not None else None for i in todo]
            histories = train_all(models, self.splits, [specs[i] for i in todo], held, stop_epoch)
            for tmp, model in zip(tmps, models):
                save_tensors(tmp, model.state_dict())
            return [{"history": h, "diverged": bool(h and h[-1]["diverged"])} for h in histories]
        keys = [{"start": st.name, "mask": m.name if m else None, "train": sp.as_dict(), "stop_epoch": stop_epoch,
                 **self.cfg.data.spec()} for st, m, sp in zip(starts, masks, specs)]
        return self.store.get_or_create_many("train", keys, compute)

    def prune(self, trained: Artifact, prev: Artifact | None, fraction: float, round_: int) -> Artifact:
        """The mask after removing ``fraction`` of the weights alive in ``prev`` from ``trained``,
        those of lowest score by the study's unstructured method (magnitude: smallest |w|)."""
        cfg = self.cfg.pruning

        def compute(tmp):
            model = self.new_model()
            model.load_state_dict(trained.tensors())
            masks = prev.tensors() if prev is not None else full_masks(model, cfg.prune_layers)
            new = prune_round(model, masks, fraction, cfg.prune_scope, cfg.method)
            save_tensors(tmp, new)
            overall, per_layer = sparsity(new)
            return {"round": round_, "sparsity": overall, "layer_sparsity": per_layer}
        spec_d = {"trained": trained.name, "prev": prev.name if prev else None, "fraction": fraction,
                  "scope": cfg.prune_scope, "layers": list(cfg.prune_layers or []) or None,
                  **({"method": cfg.method} if cfg.method != "magnitude" else {})}  # magnitude's keys as before
        return self.store.get_or_create("mask", spec_d, compute)

    def mask_efficiency(self, mask: Artifact) -> dict[str, Any]:
        """Parameters, FLOPs and latency of the network under ``mask`` against the dense one,
        measured once per mask (a meta-only artifact; the lottery regimes never ask for it)."""
        def compute(tmp):
            model = self.new_model()
            return {"efficiency": efficiency(model, model, self.splits.input_shape, self.device, masks=mask.tensors())}
        return self.store.get_or_create("efficiency", {"mask": mask.name}, compute).meta["efficiency"]

    def prune_channels(self, weights: Artifact, method: str, seed: int = 0,
                       counts: dict[str, int] | None = None) -> Artifact:
        """The structured-pruned network of ``weights``: channels physically removed by ``method``
        (``trainables.structured``), the survivors keeping their values; its meta holds what rebuilds
        the architecture and the dense and pruned networks' parameters, FLOPs and latency.  The
        study's ratios apply (``--prune-ratio``, ``--layer-ratios``, ``--preset``) unless ``counts``
        gives every layer's kept channels exactly (the random control copies another network's)."""
        from trainables.structured import StructuredSpec, prune_structured, pruned_state
        cfg = self.cfg.pruning
        if counts is not None:
            ratio, layer_ratios, preset = 0.0, None, None
        elif get_method(method).allocation == "global":  # one threshold over all layers: no per-layer ratios
            ratio, layer_ratios, preset = cfg.prune_ratio, None, None
        else:
            ratio, layer_ratios, preset = cfg.prune_ratio, dict(cfg.layer_ratios or ()) or None, cfg.preset
        spec = StructuredSpec(method, ratio=ratio, layer_ratios=layer_ratios, preset=preset, seed=seed,
                              counts=dict(counts) if counts is not None else None)

        def compute(tmp):
            model = self.new_model()
            model.load_state_dict(weights.tensors())
            example = torch.zeros(1, *self.splits.input_shape, device=self.device)
            pruned = prune_structured(model, spec, example)
            state = pruned_state(pruned)
            save_tensors(tmp, state.pop("state_dict"))
            return {**state, "efficiency": efficiency(model, pruned, self.splits.input_shape, self.device)}
        key = {"weights": weights.name, "method": method, "ratio": None if preset or counts is not None else ratio,
               "preset": preset, "layer_ratios": layer_ratios, "seed": seed if method == "random-channel" else None,
               **({"counts": dict(counts)} if counts is not None else {})}
        return self.store.get_or_create("arch", key, compute)

    def restore(self, arch: Artifact) -> nn.Module:
        """The pruned network of a ``prune_channels`` artifact, with its weights."""
        from trainables.structured import restore_pruned
        state = {k: arch.meta[k] for k in ("format", "input_shape", "channels", "widths")}
        return restore_pruned(self.new_model(), {**state, "state_dict": arch.tensors()}).to(self.device)

    # -- compositions --------------------------------------------------------------------------
    def imp(self, lr: float, seed: int, rewind_epoch: int = 0) -> "ImpResult":
        """Pretrain, then R rounds of magnitude pruning, rewinding survivors to epoch ``rewind_epoch``.

        Round r's mask comes from the weights trained under round r-1's mask (round 1: the dense
        pretrained weights); the last mask is not trained here: that is the regime's own training.
        A diverged training ends the chain: there are no meaningful magnitudes to prune by.
        """
        return self.imp_many(lr, [seed], rewind_epoch)[0]

    def imp_many(self, lr: float, seeds: list[int], rewind_epoch: int = 0) -> list["ImpResult"]:
        """``imp`` for several seeds, each stage's trainings together (``train_many``): the same
        artifacts as one seed at a time."""
        cfg, epochs = self.cfg.pruning, self.cfg.training.epochs
        specs = [self.pretrain_spec(lr, seed) for seed in seeds]
        theta0, dense = self.pretrain_many(lr, seeds)
        results = [ImpResult(theta0=t, rewind=t, pretrained=d, masks=[], trained=[],
                             stages=[StageRun("pretrain", d.name, tuple(d.meta["history"]), 0.0)])
                   for t, d in zip(theta0, dense)]
        live = [i for i in range(len(seeds)) if not dense[i].meta["diverged"]]
        if rewind_epoch > 0 and live:
            for i, art in zip(live, self.train_many([theta0[i] for i in live], [None] * len(live),
                                                    [specs[i] for i in live], rewind_epoch)):
                results[i].rewind = art
        fraction = per_round_fraction(cfg.sparsity, cfg.rounds)
        trained: list[Artifact] = list(dense)
        for r in range(1, cfg.rounds + 1):
            for i in live:
                res = results[i]
                res.masks.append(self.prune(trained[i], res.masks[-1] if res.masks else None, fraction, r))
                res.trained.append(trained[i])  # theta_E of round r: the weights mask r was chosen from
            if r == cfg.rounds or not live:
                break
            again = self.train_many([results[i].rewind for i in live], [results[i].masks[-1] for i in live],
                                    [specs[i] for i in live], epochs)
            for i, art in zip(live, again):
                trained[i] = art
                results[i].stages.append(StageRun(f"imp_round_{r}", art.name, tuple(art.meta["history"]),
                                                  results[i].masks[-1].meta["sparsity"]))
            live = [i for i in live if not trained[i].meta["diverged"]]
        return results

    def pretrain_many(self, lr: float, seeds: list[int]) -> tuple[list[Artifact], list[Artifact]]:
        """Each seed's theta_0 and its dense pretraining (trained together, ``train_many``)."""
        theta0 = [self.init(seed) for seed in seeds]
        return theta0, self.train_many(theta0, [None] * len(seeds), [self.pretrain_spec(lr, seed) for seed in seeds],
                                       self.cfg.training.epochs)

    def prepare(self, lr: float, seeds: list[int], rewind_epoch: int = 0) -> None:
        """The start points' trainings of several seeds (pretraining and IMP, or the pretraining a
        structured method prunes), trained together into the store: the seeds' regime then finds
        them there."""
        if not self.cfg.pruning.structured:
            self.imp_many(lr, seeds, rewind_epoch)
        else:
            self.pretrain_many(lr, seeds)


@dataclass
class ImpResult:
    theta0: Artifact
    rewind: Artifact
    pretrained: Artifact
    masks: list[Artifact]
    stages: list[StageRun]
    trained: list[Artifact]  # trained[r-1]: the trained weights mask r was chosen from

    @property
    def final_mask(self) -> Artifact | None:
        return self.masks[-1] if self.masks else None
