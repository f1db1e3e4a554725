"""Reading the weights a worker holds in the clear (``public`` field messages: ``otp``, ``slalom``).

A public weight message holds ``W̃ = round(2^l · W)`` embedded in F_p (signed integers, or their
residues in ``[0, p)``; both are read as the centred representative in ``(−p/2, p/2]``).  The
modulus comes from the message's meta; the exponent ``l`` is never sent.  It is recovered here:

* **relative exponents** between two messages of the same layer: the weights move little between
  consecutive messages, so ``‖W̃_k‖ / ‖W̃_{k−1}‖ ≈ 2^(l_k − l_{k−1})``; rounding the log-ratio gives
  the integer difference (two messages of one step hold the *same* ``W_t``: the ratio is exact);
* **the absolute exponent** of a layer's first message from PyTorch's default initialisation
  (``Linear``/``Conv2d``: ``U(±1/√fan_in)``, standard deviation ``1/√(3·fan_in)``), exact at step 0
  of a training view and only a prior for a model that has trained for long (``slalom``: off by 1–2
  after 300 steps, measured).  A ReLU network's predictions do not depend on how a positive scale
  is split between its layers (the biases are refitted); for other activations
  :mod:`.visible_theft` fits power-of-two corrections on the public split.

Layouts (:mod:`blindtrain.protocols.base`): ``Linear`` forward sends ``Wᵀ`` (n×m), its input gradient
``W`` (m×n); ``Conv2d`` sends ``W`` (m×c×kh×kw) for both.

A ``public`` message without a modulus (a protocol that hands weights over as plain floats) is read
as the weights themselves (exponent 0).

A message whose centred values spread over the whole field is not a fixed-point weight (a
uniformly random field element has ``|centred| > p/4`` half of the time; an encoded weight never
comes near): such messages are rejected, never decoded into garbage that looks like a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .recovery import Knowledge, Message

#: a fixed-point tensor keeps every |centred value| far below p/4; uniform field elements exceed it half the time
UNIFORM_FRACTION_LIMIT = 0.05


@dataclass(frozen=True)
class WeightSnapshot:
    """One decoded weight message: the plaintext ``W_t`` of a layer, in the ``state_dict`` layout."""

    step: int
    layer: str
    name: str              #: ``state_dict`` key (``<layer>.weight``)
    encoded: np.ndarray    #: as sent, in the state_dict layout: centred integers ``W̃`` (field) or floats (clear)
    exponent: int          #: ``l``: ``W = W̃ · 2^-l`` (0 for a message that was not in a field)
    index: int             #: the message's position in its transcript
    field: bool = True     #: whether the message was a fixed-point field encoding

    @property
    def weight(self) -> np.ndarray:
        return self.encoded.astype(np.float64) * math.ldexp(1.0, -self.exponent)

    def describe(self) -> str:
        if not self.field:
            return f"{self.name} at step {self.step} (floats in the clear)"
        bits = int(np.abs(self.encoded).max()).bit_length() + 1
        return f"{self.name} at step {self.step} ({bits} bits, scale 2^-{self.exponent})"


def centred_integers(array: np.ndarray, modulus: int) -> np.ndarray:
    """Field elements (signed integers or residues, any dtype) -> centred int64 representatives."""
    values = np.asarray(array)
    if values.dtype.kind == "f":
        values = np.rint(values.astype(np.float64))
    values = np.mod(values.astype(np.int64), np.int64(modulus))
    return np.where(values > modulus // 2, values - np.int64(modulus), values)


def looks_uniform(centred: np.ndarray, modulus: int) -> bool:
    """True if the values spread over the field like uniform elements (no fixed-point structure)."""
    if centred.size == 0:
        return True
    return float(np.mean(np.abs(centred) > modulus // 4)) > UNIFORM_FRACTION_LIMIT


def weighted_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Layer name -> module for every Linear / Conv2d (the layers whose weights a field protocol sends)."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}


def _to_state_layout(message: Message, module: torch.nn.Module, centred: np.ndarray) -> np.ndarray | None:
    shape = tuple(module.weight.shape)
    if isinstance(module, torch.nn.Linear):
        if message.op == "forward" and centred.shape == shape[::-1]:
            return centred.T.copy()
        if centred.shape == shape:
            return centred
        return None
    return centred if centred.shape == shape else None


def init_exponent(integers: np.ndarray, fan_in: int) -> int:
    """Exponent prior from the default init ``U(±1/√fan_in)``: ``std(W) = 1/√(3·fan_in)``."""
    spread = float(np.std(integers.astype(np.float64)))
    if spread == 0.0:
        return 0
    return int(round(math.log2(spread * math.sqrt(3.0 * fan_in))))


def relative_exponent(current: np.ndarray, previous: np.ndarray) -> int:
    """``l_current − l_previous`` for two encodings of (nearly) the same weights."""
    a = float(np.linalg.norm(current.astype(np.float64)))
    b = float(np.linalg.norm(previous.astype(np.float64)))
    if a == 0.0 or b == 0.0:
        return 0
    return int(round(math.log2(a / b)))


@dataclass
class WeightView:
    """Every weight snapshot a view holds, per layer in message order, plus what was rejected."""

    snapshots: dict[str, list[WeightSnapshot]]   #: layer -> snapshots in transcript order
    rejected: list[str]                           #: why messages were not read (for the notes)
    modulus: int | None

    def per_step(self, layer: str) -> dict[int, WeightSnapshot]:
        """step -> the finest snapshot of that step (largest exponent: most bits of ``W_t``)."""
        best: dict[int, WeightSnapshot] = {}
        for snap in self.snapshots.get(layer, []):
            if snap.step not in best or snap.exponent > best[snap.step].exponent:
                best[snap.step] = snap
        return dict(sorted(best.items()))

    def latest(self) -> dict[str, WeightSnapshot]:
        """layer -> the finest snapshot of the last step holding that layer."""
        out = {}
        for layer in self.snapshots:
            steps = self.per_step(layer)
            if steps:
                out[layer] = steps[max(steps)]
        return out

    @property
    def layers(self) -> list[str]:
        return [layer for layer, snaps in self.snapshots.items() if snaps]


def read_weights(messages: Sequence[Message], knowledge: Knowledge) -> WeightView:
    """Decode every ``public`` message that is a weight of the victim's architecture (field messages
    decoded as above; a public message without a modulus is read as plaintext floats)."""
    modules = weighted_layers(knowledge.build_model())
    raw: dict[str, list[tuple[Message, np.ndarray]]] = {}
    rejected: list[str] = []
    modulus = None
    for message in messages:
        if message.kind != "public":
            continue
        module = modules.get(message.layer)
        if module is None:
            rejected.append(f"{message.key}: layer {message.layer!r} is not a weighted layer of the architecture")
            continue
        if message.modulus is None:
            centred = np.asarray(message.array, dtype=np.float64)
        else:
            modulus = int(message.modulus)
            centred = centred_integers(message.array, modulus)
        if message.modulus is not None and looks_uniform(centred, modulus):
            rejected.append(f"{message.key}: values spread over all of F_p (no fixed-point structure): not read")
            continue
        laid = _to_state_layout(message, module, centred)
        if laid is None:
            rejected.append(f"{message.key}: shape {centred.shape} fits no layout of {message.layer}.weight")
            continue
        raw.setdefault(message.layer, []).append((message, laid))
    snapshots: dict[str, list[WeightSnapshot]] = {}
    for layer, entries in raw.items():
        fan_in = int(np.prod(modules[layer].weight.shape[1:]))
        out = []
        previous = exponent = None
        for message, encoded in entries:
            if message.modulus is None:
                out.append(WeightSnapshot(step=message.step, layer=layer, name=f"{layer}.weight", encoded=encoded,
                                          exponent=0, index=message.index, field=False))
                continue
            if previous is None:
                exponent = init_exponent(encoded, fan_in)
            else:
                exponent += relative_exponent(encoded, previous)
            out.append(WeightSnapshot(step=message.step, layer=layer, name=f"{layer}.weight", encoded=encoded,
                                      exponent=exponent, index=message.index))
            previous = encoded
        snapshots[layer] = out
    return WeightView(snapshots=snapshots, rejected=rejected, modulus=modulus)
