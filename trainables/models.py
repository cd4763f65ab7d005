"""Models behind a registry, with a seeded initialiser shared by theta_0 and random re-init.

Every builder has the signature ``builder(input_shape, num_classes, widths)``; ``input_shape``
excludes the batch dimension: ``(40,)`` for MNIST-1D, ``(1, 28, 28)`` for (Fashion-)MNIST,
``(3, 32, 32)`` for CIFAR.  ``widths`` overrides the default width configuration; what it means
is model-specific and documented on each class (and in ``MODELS[name].description``).

Image models (``conv2/4/6``, ``vgg*``, ``resnet*``) also expose ``model.widths``: the exact
``widths`` tuple that rebuilds the same architecture through :func:`build_model`.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import MODEL_NAMES


class MLP(nn.Module):
    """Fully connected ReLU net; LeNet-300-100 shape by default (40-300-100-10 on MNIST-1D)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] = (300, 100)):
        super().__init__()
        dims = [math.prod(input_shape), *widths]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Conv1D(nn.Module):
    """A small 1-D conv net for sequences (MNIST-1D): stride-2 convs, then a linear classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] = (32, 32, 32)):
        super().__init__()
        length = input_shape[-1]
        in_ch = 1 if len(input_shape) == 1 else input_shape[0]
        layers: list[nn.Module] = []
        for i, ch in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv1d(in_ch, ch, kernel_size=3, stride=stride, padding=1), nn.ReLU()]
            in_ch = ch
            length = (length + 2 - 3) // stride + 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * length, num_classes)
        self._unsqueeze = len(input_shape) == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unsqueeze:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x).flatten(1))


# --------------------------------------------------------------------------------------------------
# Image models
# --------------------------------------------------------------------------------------------------

def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an image input; a bare (H, W) is read as one channel."""
    if len(input_shape) == 2:
        return (1, int(input_shape[0]), int(input_shape[1]))
    if len(input_shape) == 3:
        return tuple(int(v) for v in input_shape)  # type: ignore[return-value]
    raise ValueError(f"image models need an input shape (C, H, W) or (H, W), got {input_shape}")


class _ImageNet(nn.Module):
    """Adds the channel dimension to (N, H, W) batches when the model was built for (H, W)."""

    _unsqueeze = False

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if self._unsqueeze else x


class ConvNet(_ImageNet):
    """Conv-2/4/6 of Frankle & Carbin (ICLR 2019, Figure 2): a VGG-like CIFAR net.

    ``n_convs`` 3x3 convs (padding 1, bias, ReLU) with a 2x2 max-pool after every second conv,
    then fully connected 256, 256 (ReLU) and the classifier.
    ``widths`` = the ``n_convs`` conv channel counts followed by the two hidden FC widths, e.g.
    Conv-4 default ``(64, 64, 128, 128, 256, 256)``.  The first FC layer's input size is derived
    from the input shape (each pool floors H and W by 2).
    Names: ``features.<i>`` (convs at the even positions of each conv/ReLU pair, pools between)
    and ``classifier.<i>`` (Linear at 0, 2, 4).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: Sequence[int],
                 n_convs: int = 4):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != n_convs + 2:
            raise ValueError(f"conv{n_convs} needs {n_convs} conv widths + 2 FC widths "
                             f"({n_convs + 2} values), got {len(widths)}: {widths}")
        self.widths = widths
        self._unsqueeze = len(input_shape) == 2
        in_ch, h, w = _image_shape(input_shape)
        layers: list[nn.Module] = []
        for i, ch in enumerate(widths[:n_convs]):
            layers += [nn.Conv2d(in_ch, ch, kernel_size=3, padding=1), nn.ReLU()]
            in_ch = ch
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"input {input_shape} is too small for conv{n_convs} (pooled to {h}x{w})")
        self.features = nn.Sequential(*layers)
        fc1, fc2 = widths[n_convs:]
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * h * w, fc1), nn.ReLU(),
            nn.Linear(fc1, fc2), nn.ReLU(),
            nn.Linear(fc2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self._prep(x)).flatten(1))


VGG_CFGS: dict[int, tuple[int | str, ...]] = {
    # The CIFAR cfg lists of the network-slimming / "Rethinking" code (Liu et al.): the ImageNet
    # VGG conv stacks without the last max-pool (a global average pool follows instead).
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


def _parse_vgg_cfg(widths: Sequence[int | str], default: Sequence[int | str]) -> tuple[int | str, ...]:
    """Normalise a VGG cfg: ints and ``"M"``; an all-int list of the default's conv count gets the
    default's pool positions (so pruned channel counts can be given as plain ints)."""
    cfg: list[int | str] = []
    for v in widths:
        if isinstance(v, str) and v.strip().upper() == "M":
            cfg.append("M")
        elif isinstance(v, str) and v.strip().isdigit():
            cfg.append(int(v))
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            cfg.append(v)
        else:
            raise ValueError(f"VGG widths take positive ints and 'M', got {v!r}")
    if "M" not in cfg:
        convs = [v for v in default if v != "M"]
        if len(cfg) != len(convs):
            raise ValueError(f"an all-int VGG widths list must give the {len(convs)} conv widths "
                             f"of the default cfg (pools inserted as there), got {len(cfg)}")
        it = iter(cfg)
        cfg = ["M" if d == "M" else next(it) for d in default]
    if not any(v != "M" for v in cfg):
        raise ValueError("VGG widths need at least one conv")
    return tuple(cfg)


class VGG(_ImageNet):
    """VGG with BatchNorm for CIFAR-sized input (Liu et al. "Rethinking" / network-slimming code).

    ``features``: for each int ``v`` of the cfg a 3x3 conv (padding 1, no bias) -> BatchNorm2d ->
    ReLU; each ``"M"`` is a 2x2 max-pool.  Then a global average pool (the code's ``AvgPool2d(2)``
    on CIFAR's 2x2 map; adaptive so that 28x28 input also works) and a classifier head:

    * ``head="linear"``: one ``Linear(cfg[-1], classes)`` (network-slimming VGG-19; the
      weight-level lottery-ticket code uses the same head).
    * ``head="fc512"``: ``Linear(cfg[-1], 512)`` -> BatchNorm1d -> ReLU -> ``Linear(512, classes)``
      (Li et al. 2017 VGG-16, as in the Rethinking l1-norm-pruning code).

    ``widths`` is the cfg list (ints and ``"M"``); an all-int list with the default number of
    convs keeps the default pool positions.  Names are stable for a given cfg: conv ``features.i``
    is followed by its BatchNorm at ``features.{i+1}``; ``model.conv_bn_pairs`` lists them.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: Sequence[int | str],
                 depth: int = 16, head: str = "linear"):
        super().__init__()
        if head not in ("linear", "fc512"):
            raise ValueError(f"unknown VGG head {head!r}")
        cfg = _parse_vgg_cfg(widths, VGG_CFGS[depth])
        self.widths = cfg
        self._unsqueeze = len(input_shape) == 2
        in_ch, h, w = _image_shape(input_shape)
        layers: list[nn.Module] = []
        self.conv_bn_pairs: list[tuple[str, str]] = []
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise ValueError(f"input {input_shape} is too small for VGG cfg {cfg}")
            else:
                i = len(layers)
                self.conv_bn_pairs.append((f"features.{i}", f"features.{i + 1}"))
                layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1, bias=False),
                           nn.BatchNorm2d(int(v)), nn.ReLU()]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if head == "linear":
            self.classifier: nn.Module = nn.Linear(in_ch, num_classes)
        else:
            self.classifier = nn.Sequential(nn.Linear(in_ch, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                            nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(self._prep(x))).flatten(1))


class ShortcutA(nn.Module):
    """He et al. (2016) option-A shortcut: strided identity, extra channels zero-padded (no
    parameters).  Subsampling ``x[..., ::s, ::s]`` gives ceil(H/s), the same size as the block's
    stride-s 3x3 conv with padding 1, also for odd sizes (28x28 input -> 14 -> 7)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_ch} -> {out_ch})")
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.out_ch != self.in_ch:
            x = F.pad(x, (0, 0, 0, 0, 0, self.out_ch - self.in_ch))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_ch}->{self.out_ch}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv1 (3x3, stride s) -> bn1 -> ReLU -> conv2 (3x3) -> bn2, plus the shortcut, then ReLU.

    ``mid`` is conv1's output width (the block-internal width that structured pruning may
    shrink); the block's output width ``out_ch`` is what the shortcut dictates.
    """

    def __init__(self, in_ch: int, mid: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, out_ch, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = ShortcutA(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(_ImageNet):
    """CIFAR ResNet of He et al. (2016, Sec. 4.2): basic blocks, option-A shortcuts, depth 6n+2.

    Stem ``conv1``/``bn1`` (3x3, stage-1 width), three stages ``layer1..layer3`` of ``n`` blocks
    (the first block of stages 2 and 3 has stride 2), global average pool, ``fc``.

    ``widths`` (flat ints, so it round-trips through a CLI or JSON):

    * ``(w1, w2, w3)``: the stage widths (default ``(16, 32, 64)``; non-decreasing, since option-A
      shortcuts only zero-pad); every block's internal width equals its stage width;
    * ``(w1, w2, w3, m_1, ..., m_3n)``: stage widths followed by one internal width per block, in
      order ``layer1.0, layer1.1, ..., layer3.{n-1}`` (the ``cfg`` list of the Rethinking
      l1-norm-pruning ResNet).  ``m_k`` is the output width of that block's ``conv1``/``bn1`` and
      the input width of its ``conv2``; the block's output width stays the stage width.

    A block-internal (conv1) structured pruning therefore rebuilds as
    ``build_model(name, shape, classes, (*stage_widths, *mids))``; ``model.widths`` always holds
    the full form and ``model.block_names`` the block prefixes in ``mid`` order.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: Sequence[int] = (16, 32, 64),
                 depth: int = 56):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = tuple(int(w) for w in widths)
        if len(widths) == 3:
            stages, mids = widths, tuple(w for w in widths for _ in range(n))
        elif len(widths) == 3 + 3 * n:
            stages, mids = widths[:3], widths[3:]
        else:
            raise ValueError(f"resnet{depth} widths: 3 stage widths, optionally followed by {3 * n} "
                             f"block-internal widths; got {len(widths)} values")
        if any(w < 1 for w in widths):
            raise ValueError(f"widths must be positive, got {widths}")
        if not stages[0] <= stages[1] <= stages[2]:
            raise ValueError(f"stage widths must be non-decreasing for option-A shortcuts, got {stages}")
        self.widths = (*stages, *mids)
        self.depth = depth
        self._unsqueeze = len(input_shape) == 2
        in_ch = _image_shape(input_shape)[0]
        self.conv1 = nn.Conv2d(in_ch, stages[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stages[0])
        self.block_names: list[str] = []
        ch, k = stages[0], 0
        for s, out_ch in enumerate(stages):
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(BasicBlock(ch, mids[k], out_ch, stride))
                self.block_names.append(f"layer{s + 1}.{b}")
                ch, k = out_ch, k + 1
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(stages[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self._prep(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]
    default_widths: tuple[int | str, ...]
    description: str


def _conv_widths(n_convs: int) -> tuple[int, ...]:
    return tuple(64 * 2 ** (i // 2) for i in range(n_convs)) + (256, 256)


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(MLP, (300, 100), "fully connected ReLU net; --widths are the hidden layer sizes"),
    "conv1d": ModelEntry(Conv1D, (32, 32, 32), "1-D conv net; --widths are the conv channel counts"),
    "lenet300": ModelEntry(MLP, (300, 100), "LeNet-300-100 (flatten, 300, 100, classes; the mlp with "
                                            "its default widths); --widths are the hidden layer sizes"),
}
for _n in (2, 4, 6):
    MODELS[f"conv{_n}"] = ModelEntry(
        functools.partial(ConvNet, n_convs=_n), _conv_widths(_n),
        f"Conv-{_n} (Frankle & Carbin 2019): {_n} 3x3 convs, max-pool after each pair, FC 256-256; "
        f"--widths are the {_n} conv channel counts then the 2 FC widths")
for _d, _head, _src in ((11, "linear", "network-slimming style head: one Linear"),
                        (16, "fc512", "Li et al. 2017 head: Linear 512-BN-ReLU-Linear"),
                        (19, "linear", "network-slimming head: one Linear")):
    MODELS[f"vgg{_d}"] = ModelEntry(
        functools.partial(VGG, depth=_d, head=_head), VGG_CFGS[_d],
        f"VGG-{_d} with BatchNorm, CIFAR variant ({_src}); --widths are the cfg (ints and 'M', or "
        f"just the {sum(v != 'M' for v in VGG_CFGS[_d])} conv widths)")
for _d in (20, 56, 110):
    _n = (_d - 2) // 6
    MODELS[f"resnet{_d}"] = ModelEntry(
        functools.partial(CifarResNet, depth=_d), (16, 32, 64),
        f"CIFAR ResNet-{_d} (He et al. 2016; basic blocks, option-A shortcuts, {_n} blocks per stage); "
        f"--widths are the 3 stage widths, optionally followed by {3 * _n} block-internal (conv1) widths")
del _n, _d, _head, _src

# the flags list the models without importing this module (trainables.config.MODEL_NAMES)
if tuple(MODELS) != MODEL_NAMES:
    raise ImportError("trainables.config.MODEL_NAMES must name exactly MODELS, in order")

INIT_SCHEME = "kaiming_normal_fan_in_relu+zero_bias"


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Draw all weights from one seeded generator (Kaiming normal, zero biases), in module order.

    Written out rather than calling ``reset_parameters`` because that draws from torch's global RNG;
    here theta_0 and every random re-initialisation are reproducible from their recorded seed.
    BatchNorm layers (no randomness) get weight 1, bias 0 and fresh running statistics.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=g)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                if m.affine:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
    return model


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int,
                widths: tuple[int, ...] | None = None) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    entry = MODELS[name]
    return entry.builder(tuple(input_shape), num_classes, tuple(widths or entry.default_widths))


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module for every layer whose ``weight`` can be pruned (Linear and Conv)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
