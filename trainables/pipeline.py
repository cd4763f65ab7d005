"""The pipeline's stages as artifacts: theta_0, trained weights (to epoch k or E), IMP masks.

Every stage is keyed by the fields that determine it (see ``trainables.artifacts``), so a
winning-ticket trial and a random-re-init trial with the same LR and seed share one IMP run, and
late rewinding reuses the pretraining's first k epochs only through its own, equally cached, run.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from trainables.artifacts import Artifact, ArtifactStore, save_tensors
from trainables.data import Splits, load_splits
from trainables.models import INIT_SCHEME, build_model, init_weights
from trainables.pruning import full_masks, per_round_fraction, prune_round, sparsity
from trainables.training import Trainer, TrainSpec


@dataclass(frozen=True)
class PipelineConfig:
    """Study-wide settings of the pipeline (the per-trial LR and seed are passed separately)."""

    dataset: str = "mnist1d"
    data_dir: str = ""
    data_seed: int = 42
    val_fraction: float = 0.2
    train_subset: int = 0  # train on the first N examples of the training split only (0: all of them)
    model: str = "mlp"
    widths: tuple[int, ...] | None = None
    epochs: int = 20
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 0
    target_sparsity: float = 0.8
    rounds: int = 5
    prune_scope: str = "global"
    prune_layers: tuple[str, ...] | None = None
    rewind_epoch: int = 1
    lr_coupling: str = "all"  # "all": the trial LR drives pretraining, IMP and retraining; "retrain"
    pretrain_lr: float = 0.1  # LR of pretraining and IMP rounds when lr_coupling == "retrain"
    # how the network is pruned: "magnitude" (masks, IMP above) or a structured method that removes
    # channels (trainables.structured: "l1-filter", "slimming")
    method: str = "magnitude"
    prune_ratio: float = 0.5  # structured: fraction of each prunable layer's channels removed
    preset: str | None = None  # structured: the paper's per-layer ratios (trainables.structured.PRESETS)
    layer_ratios: tuple[tuple[str, float], ...] | None = None  # structured: (layer, ratio) overriding prune_ratio
    slimming_penalty: float = 1e-4  # slimming: L1 strength on BN scales during pretraining
    fine_tune_epochs: int | None = None  # fine_tune's epochs F (default: epochs)
    scratch_b_cap: float = 2.0  # scratch_b: at most this many times the epochs of scratch_e

    @property
    def structured(self) -> bool:
        return self.method != "magnitude"

    def data_spec(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data_seed": self.data_seed, "val_fraction": self.val_fraction,
                **({"train_subset": self.train_subset} if self.train_subset else {})}

    def model_spec(self) -> dict[str, Any]:
        return {"model": self.model, "widths": list(self.widths) if self.widths else None,
                "init": INIT_SCHEME, **self.data_spec()}

    def train_spec(self, lr: float, seed: int) -> TrainSpec:
        return TrainSpec(lr=lr, epochs=self.epochs, batch_size=self.batch_size, momentum=self.momentum,
                         weight_decay=self.weight_decay, schedule=self.schedule,
                         warmup_epochs=self.warmup_epochs, seed=seed)

    def pretrain_lr_for(self, trial_lr: float) -> float:
        return trial_lr if self.lr_coupling == "all" else self.pretrain_lr

    def pretrain_spec(self, trial_lr: float, seed: int) -> TrainSpec:
        """Pretraining (and IMP rounds): slimming adds its L1 penalty on BN scales."""
        spec = self.train_spec(self.pretrain_lr_for(trial_lr), seed)
        return replace(spec, bn_l1=self.slimming_penalty) if self.method == "slimming" else spec

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths) if self.widths else None
        d["prune_layers"] = list(self.prune_layers) if self.prune_layers else None
        d["layer_ratios"] = [list(x) for x in self.layer_ratios] if self.layer_ratios else None
        return d


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
class Phase:
    """A training phase that led to the trial's start point, for the epochs table."""

    name: str
    artifact: str
    history: list[dict[str, Any]]
    sparsity: float


@dataclass
class Pipeline:
    cfg: PipelineConfig
    store: ArtifactStore
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @functools.cached_property
    def splits(self) -> Splits:
        s = load_splits(self.cfg.dataset, self.cfg.data_dir, self.cfg.data_seed, self.cfg.val_fraction,
                        self.cfg.data_seed)
        if self.cfg.train_subset:  # the split is already shuffled: its first N examples are a random subset
            s = replace(s, x_train=s.x_train[:self.cfg.train_subset], y_train=s.y_train[:self.cfg.train_subset])
        return s.to(self.device)

    def new_model(self) -> nn.Module:
        s = self.splits
        return build_model(self.cfg.model, s.input_shape, s.num_classes, self.cfg.widths).to(self.device)

    # -- stages --------------------------------------------------------------------------------
    def init(self, seed: int) -> Artifact:
        """theta_0 (or a random re-initialisation): a seeded draw from the model's initialiser."""
        def compute(tmp):
            model = init_weights(build_model(self.cfg.model, self.splits.input_shape,
                                             self.splits.num_classes, self.cfg.widths), seed)
            save_tensors(tmp, model.state_dict())
            return {"seed": seed}
        return self.store.get_or_create("init", {**self.cfg.model_spec(), "seed": seed}, compute)

    def train(self, start: Artifact, mask: Artifact | None, spec: TrainSpec, stop_epoch: int) -> Artifact:
        """Weights after ``stop_epoch`` epochs of ``spec``'s schedule from ``start`` under ``mask``."""
        def compute(tmp):
            model = self.new_model()
            model.load_state_dict(start.tensors())
            masks = mask.tensors() if mask is not None else None
            history = Trainer(model, self.splits, spec, masks).run(stop_epoch)
            save_tensors(tmp, model.state_dict())
            diverged = bool(history and history[-1]["diverged"])
            return {"history": history, "diverged": diverged}
        spec_d = {"start": start.name, "mask": mask.name if mask else None, "train": spec.as_dict(),
                  "stop_epoch": stop_epoch, **self.cfg.data_spec()}
        return self.store.get_or_create("train", spec_d, compute)

    def prune(self, trained: Artifact, prev: Artifact | None, fraction: float, round_: int) -> Artifact:
        """The mask after removing ``fraction`` of the weights alive in ``prev`` from ``trained``."""
        def compute(tmp):
            model = self.new_model()
            model.load_state_dict(trained.tensors())
            masks = prev.tensors() if prev is not None else full_masks(model, self.cfg.prune_layers)
            new = prune_round(model, masks, fraction, self.cfg.prune_scope)
            save_tensors(tmp, new)
            overall, per_layer = sparsity(new)
            return {"round": round_, "sparsity": overall, "layer_sparsity": per_layer}
        spec_d = {"trained": trained.name, "prev": prev.name if prev else None, "fraction": fraction,
                  "scope": self.cfg.prune_scope, "layers": list(self.cfg.prune_layers or []) or None}
        return self.store.get_or_create("mask", spec_d, compute)

    def mask_efficiency(self, mask: Artifact) -> dict[str, Any]:
        """Parameters, FLOPs and latency of the network under ``mask`` against the dense one,
        measured once per mask (a meta-only artifact; the lottery regimes never ask for it)."""
        def compute(tmp):
            model = self.new_model()
            return {"efficiency": efficiency(model, model, self.splits.input_shape, self.device, masks=mask.tensors())}
        return self.store.get_or_create("efficiency", {"mask": mask.name}, compute).meta["efficiency"]

    def prune_channels(self, weights: Artifact, method: str, seed: int = 0,
                       exact: dict[str, float] | None = None) -> Artifact:
        """The structured-pruned network of ``weights``: channels physically removed by ``method``
        (``trainables.structured``), the survivors keeping their values; its meta holds what rebuilds
        the architecture and the dense and pruned networks' parameters, FLOPs and latency.  The
        study's ratios apply (``--prune-ratio``, ``--layer-ratios``, ``--preset``) unless ``exact``
        gives every pruned layer's ratio (the random control copies another network's counts)."""
        from trainables.structured import StructuredSpec, prune_structured, pruned_state
        cfg = self.cfg
        if exact is not None:
            ratio, layer_ratios, preset = 0.0, dict(exact), None
        elif method == "slimming":  # one global threshold: no per-layer ratios
            ratio, layer_ratios, preset = cfg.prune_ratio, None, None
        else:
            ratio, layer_ratios, preset = cfg.prune_ratio, dict(cfg.layer_ratios or ()) or None, cfg.preset
        spec = StructuredSpec(method, ratio=ratio, layer_ratios=layer_ratios, preset=preset, seed=seed)

        def compute(tmp):
            model = self.new_model()
            model.load_state_dict(weights.tensors())
            example = torch.zeros(1, *self.splits.input_shape, device=self.device)
            pruned = prune_structured(model, spec, example)
            state = pruned_state(pruned)
            save_tensors(tmp, state.pop("state_dict"))
            return {**state, "efficiency": efficiency(model, pruned, self.splits.input_shape, self.device)}
        key = {"weights": weights.name, "method": method, "ratio": None if preset else ratio,
               "preset": preset, "layer_ratios": layer_ratios, "seed": seed if method == "random-channel" else None}
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
        cfg = self.cfg
        spec = cfg.pretrain_spec(lr, seed)
        theta0 = self.init(seed)
        dense = self.train(theta0, None, spec, cfg.epochs)
        phases = [Phase("pretrain", dense.name, dense.meta["history"], 0.0)]
        result = ImpResult(theta0=theta0, rewind=theta0, pretrained=dense, masks=[], phases=phases, trained=[])
        if dense.meta["diverged"]:
            return result
        if rewind_epoch > 0:
            result.rewind = self.train(theta0, None, spec, rewind_epoch)
        fraction = per_round_fraction(cfg.target_sparsity, cfg.rounds)
        trained, mask = dense, None
        for r in range(1, cfg.rounds + 1):
            mask = self.prune(trained, mask, fraction, r)
            result.masks.append(mask)
            result.trained.append(trained)  # theta_E of round r: the weights mask r was chosen from
            if r == cfg.rounds:
                break
            trained = self.train(result.rewind, mask, spec, cfg.epochs)
            phases.append(Phase(f"imp_round_{r}", trained.name, trained.meta["history"], mask.meta["sparsity"]))
            if trained.meta["diverged"]:
                break
        return result


@dataclass
class ImpResult:
    theta0: Artifact
    rewind: Artifact
    pretrained: Artifact
    masks: list[Artifact]
    phases: list[Phase]
    trained: list[Artifact]  # trained[r-1]: the trained weights mask r was chosen from

    @property
    def final_mask(self) -> Artifact | None:
        return self.masks[-1] if self.masks else None
