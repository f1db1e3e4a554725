"""The conformance suite's harness: one set of tests run over every registered protocol
(``blindtrain.protocols.load_all()``).  A protocol states what the tests hold it to on its class:
``tolerance`` (against plain PyTorch), ``transcript_kinds`` (per worker role), ``verifies_results``
(every adversary is caught), ``info.trains`` and its typed ``Options`` (every choice is run)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blindtrain as bt
from blindtrain.protocols import load_all
from blindtrain.protocols.options import describe

REGISTRY = dict(sorted(load_all().items()))  # the registered protocols (a copy: test fixtures add their own)
INPUT = (1, 6, 6)
CLASSES = 3


def tiny_model() -> nn.Module:
    """Two convolutions (the second has an input gradient) and two linear layers; seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 8), nn.ReLU(), nn.Linear(8, CLASSES))


def batch(seed: int = 0, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((size, *INPUT), generator=g), torch.randint(0, CLASSES, (size,), generator=g)


def variants() -> list:
    """``(protocol, options)``: each protocol with its defaults, and with every other value of each of its
    choice options (``--unmask mask-worker``, ``update=enclave`` ...)."""
    out = []
    for name, cls in sorted(REGISTRY.items()):
        out.append(pytest.param(name, {}, id=name))
        for spec in describe(cls.Options):
            for choice in spec.choices or ():
                if choice != spec.default:
                    out.append(pytest.param(name, {spec.name: choice}, id=f"{name}-{spec.name}={choice}"))
    return out


def session(protocol: str, *, model: nn.Module, lr: float = 1.0, **kwargs):
    """A session on ``model`` (SGD for protocols that train; none for inference-only ones)."""
    cls = REGISTRY[protocol]
    s = bt.Session(protocol=protocol, device="cpu", seed=0, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr) if cls.info.trains else None
    wrapped, optimizer = s.prepare(model, optimizer)
    return s, wrapped, optimizer


def step(protocol: str, wrapped, optimizer, x, y) -> torch.Tensor:
    """One training step (or, for an inference-only protocol, one forward batch)."""
    if optimizer is None:
        with torch.no_grad():
            return wrapped(x)
    optimizer.zero_grad()
    out = wrapped(x)
    F.cross_entropy(out, y).backward()
    optimizer.step()
    return out


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30))



