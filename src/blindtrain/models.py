"""Model factory: ``mlp``, ``lenet``, ``resnet18``, ``resnet50`` (CIFAR variants), ``vit-tiny``.

:func:`build` adapts every model to the dataset's input shape ``C×H×W`` and class
count, so the user never reshapes inputs.  All bilinear ops are ``nn.Linear``,
``nn.Conv2d`` or :class:`blindtrain.nn.MatMul`, which the layer glue offloads.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from pathlib import Path

import torch
from torch import nn

from .errors import UsageError
from .nn import Arctan, MatMul

MODELS = ("mlp", "lenet", "resnet18", "resnet50", "vit-tiny")
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "arctan": Arctan, "softplus": nn.Softplus}


def mlp(input_shape, num_classes: int, *, hidden=(128, 64), activation: str = "relu") -> nn.Sequential:
    if activation not in ACTIVATIONS:
        raise UsageError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    if not hidden or any(int(w) < 1 for w in hidden):
        raise UsageError("--hidden needs one or more positive widths, e.g. 128,64")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, int(size)), ACTIVATIONS[activation]()]
        width = int(size)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class LeNet(nn.Module):
    """LeNet-5 style: two 5×5 convs (padded, so any input of 8×8 or more works), three FC layers."""

    def __init__(self, input_shape, num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 16 * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3×3 stem with stride 1, no max-pool, four stages, global average pool."""

    def __init__(self, block, counts, input_shape, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        stages, cin = [], 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), counts)):
            blocks = []
            for j in range(count):
                blocks.append(block(cin, planes, 2 if (j == 0 and index > 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.scores = MatMul()   # Q·Kᵀ, both operands private
        self.mix = MatMul()      # softmax(QKᵀ)·V, both operands private
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(self.scores(q * self.scale, k.transpose(-2, -1)), dim=-1)
        return self.proj(self.mix(attn, v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT for small images (patch 4): conv patch embedding, class token, pre-norm blocks."""

    def __init__(self, input_shape, num_classes: int, *, patch: int = 4, dim: int = 192, depth: int = 12,
                 heads: int = 3, mlp_ratio: int = 4) -> None:
        super().__init__()
        c, h, w = input_shape
        if h % patch or w % patch:
            raise UsageError(f"vit-tiny needs image sides divisible by the patch size {patch}, got {h}×{w}")
        tokens = (h // patch) * (w // patch)
        self.embed = nn.Conv2d(c, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def is_user_model(name: str) -> bool:
    """``path/to/file.py:factory`` names a model of the user's own."""
    path, colon, factory = name.rpartition(":")
    return bool(colon and factory.isidentifier() and path.endswith(".py"))


def known(name: str) -> bool:
    return name in MODELS or is_user_model(name)


def load_user_model(name: str, input_shape, num_classes: int) -> nn.Module:
    """Import ``file.py`` and call ``factory`` (the user's own, trusted code: it runs in the enclave).

    The factory is called with ``input_shape`` (C×H×W) and ``num_classes`` as keywords where its
    signature takes them, and must return an ``nn.Module``.  Every failure is one
    :class:`UsageError` line naming the file and the factory.
    """
    path_text, _, factory_name = name.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--model {name}: no such file {path_text}")
    spec = importlib.util.spec_from_file_location(f"blindtrain_user_model_{abs(hash(path.resolve()))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: report, do not crash
        raise UsageError(f"--model {name}: importing {path_text} failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UsageError(f"--model {name}: {path_text} defines no function {factory_name!r}")
    offered = {"input_shape": tuple(input_shape), "num_classes": int(num_classes)}
    try:
        accepted = inspect.signature(factory).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        model = factory(**{k: v for k, v in offered.items() if takes_any or k in accepted})
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"--model {name}: {factory_name}() failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {name}: {factory_name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build(name: str, input_shape, num_classes: int, *, hidden=None, activation: str = "relu",
          **kwargs) -> nn.Module:
    """Build model ``name`` for inputs ``C×H×W`` and ``num_classes`` outputs (or the user's own:
    ``path/to/file.py:factory``, see :func:`load_user_model`)."""
    if is_user_model(name):
        if hidden is not None:
            raise UsageError("--hidden applies to --model mlp only")
        return load_user_model(name, input_shape, num_classes)
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3:
        raise UsageError(f"models take C×H×W inputs, got shape {input_shape}")
    if name == "mlp":
        return mlp(input_shape, num_classes, hidden=hidden or (128, 64), activation=activation)
    if hidden is not None:
        raise UsageError("--hidden applies to --model mlp only")
    if name == "lenet":
        return LeNet(input_shape, num_classes)
    if name == "resnet18":
        return ResNet(BasicBlock, (2, 2, 2, 2), input_shape, num_classes)
    if name == "resnet50":
        return ResNet(Bottleneck, (3, 4, 6, 3), input_shape, num_classes)
    if name == "vit-tiny":
        return ViT(input_shape, num_classes, **kwargs)
    raise UsageError(f"unknown model {name!r}; choose from {', '.join(MODELS)} or give path/to/file.py:factory")
