"""Masked operands (``masked``, ``pad``): are they uniform in F_p, and does reading them directly work?

* :func:`uniformity`: a chi-square test of every masked / pad message against the uniform
  distribution on ``[0, p)`` (64 bins of equal width up to one element), and the *constant-feature
  test*: features that are constant across the public split (digits' always-zero border pixels) give
  the same plaintext value in every row, so their column in a plaintext or badly masked frame has
  (almost) no spread; under a one-time pad it spreads like uniform elements (``std ≈ p/√12``).
* :func:`direct_read`: the naive attack — decode a frame message as if it were plaintext
  (centred representative, scaled to the public data's spread).  Under fresh uniform pads it must
  score at chance; :func:`blindtrain.attacks.visible.recover` runs it only when the frames fail the
  uniformity test (a broken mask), so its figure is then real leakage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import chisquare

from .recovery import Knowledge, Message, Recovery, frame_messages
from .visible_weights import centred_integers, weighted_layers

BINS = 64
#: at most this many masked / pad messages are tested (evenly spaced over the view), to bound the time
MAX_TESTED = 256
#: a frame whose chi-square p-value falls below this is treated as structured (not masked)
STRUCTURE_P_VALUE = 1e-6


@dataclass(frozen=True)
class Uniformity:
    """How uniform the masked messages of a view look."""

    messages: int                  #: masked / pad messages tested
    median_p_value: float          #: chi-square p-value (uniform: spread over (0, 1), median ≈ 0.5)
    rejected_at_0_001: float       #: fraction with p < 0.001 (uniform: ≈ 0.001)
    structured: list[int]          #: indices of messages with p < STRUCTURE_P_VALUE
    constant_feature_spread: float | None  #: std of constant features' columns / (p/√12) (uniform ≈ 1)

    def describe(self) -> str:
        spread = ("n/a" if self.constant_feature_spread is None
                  else f"{self.constant_feature_spread:.3f} (uniform: 1; plaintext: 0)")
        return (f"{self.messages} masked/pad messages: chi-square ({BINS} bins) median p = "
                f"{self.median_p_value:.3f}, {100 * self.rejected_at_0_001:.1f}% below 0.001 (uniform: 0.1%), "
                f"{len(self.structured)} structured; "
                f"spread of always-constant input features in the frames: {spread}")


def _residues(message: Message) -> np.ndarray:
    p = int(message.modulus)
    return np.mod(centred_integers(message.array, p), np.int64(p))


def chi_square_p(residues: np.ndarray, modulus: int) -> float:
    """p-value of the chi-square test of ``residues`` (in ``[0, p)``) against uniform on F_p."""
    edges = (np.arange(BINS + 1, dtype=np.float64) * modulus / BINS).astype(np.int64)
    counts = np.histogram(residues.ravel(), bins=edges)[0].astype(np.float64)
    widths = np.diff(edges).astype(np.float64)
    expected = residues.size * widths / modulus
    expected *= counts.sum() / expected.sum()
    return float(chisquare(counts, expected).pvalue)


def _first_layer(knowledge: Knowledge) -> str | None:
    layers = list(weighted_layers(knowledge.build_model()))
    return layers[0] if layers else None


def uniformity(messages: Sequence[Message], knowledge: Knowledge) -> Uniformity | None:
    """Test every ``masked`` / ``pad`` field message; ``None`` when the view has none."""
    tested = [m for m in messages if m.kind in ("masked", "pad") and m.modulus is not None and m.array.size >= BINS]
    if not tested:
        return None
    if len(tested) > MAX_TESTED:
        tested = [tested[i] for i in np.linspace(0, len(tested) - 1, MAX_TESTED).astype(int)]
    p_values = np.array([chi_square_p(_residues(m), int(m.modulus)) for m in tested])
    structured = [m.index for m, pv in zip(tested, p_values) if pv < STRUCTURE_P_VALUE]
    return Uniformity(messages=len(tested), median_p_value=float(np.median(p_values)),
                      rejected_at_0_001=float(np.mean(p_values < 1e-3)), structured=structured,
                      constant_feature_spread=_constant_feature_spread(messages, knowledge))


def _constant_feature_spread(messages: Sequence[Message], knowledge: Knowledge) -> float | None:
    first = _first_layer(knowledge)
    flat = np.asarray(knowledge.public_x).reshape(len(knowledge.public_x), -1)
    constant = np.flatnonzero(flat.std(0) <= 1e-6 * (flat.std() + 1e-30))
    frames = [m for m in frame_messages(messages, first).values() if m.array.ndim >= 2] if first else []
    if constant.size == 0 or not frames:
        return None
    spreads = []
    for frame in frames:
        residues = _residues(frame).astype(np.float64).reshape(len(frame.array), -1)
        if residues.shape[1] != flat.shape[1] or residues.shape[0] < 2:
            continue
        spreads.append(residues[:, constant].std(0).mean() / (int(frame.modulus) / np.sqrt(12.0)))
    return float(np.mean(spreads)) if spreads else None


def direct_read(messages: Sequence[Message], knowledge: Knowledge, *, steps: Sequence[int] | None = None) -> Recovery:
    """Read each step's frame message as plaintext (the naive attack): inputs in the row frame."""
    recovery = Recovery(attack="direct-read")
    first = _first_layer(knowledge)
    if first is None:
        return recovery
    target_std = float(np.asarray(knowledge.public_x).std()) or 1.0
    shape = tuple(knowledge.input_shape)
    for step, frame in frame_messages(messages, first).items():
        if steps is not None and step not in steps or frame.modulus is None:
            continue
        values = centred_integers(frame.array, int(frame.modulus)).astype(np.float64)
        if int(np.prod(values.shape[1:])) != int(np.prod(shape)):
            continue
        scale = values.std() or 1.0
        recovery.inputs[step] = (values / scale * target_std).reshape(len(values), *shape).astype(np.float32)
    recovery.notes.append("frame messages decoded as plaintext (centred representatives, scaled to the public "
                          "data's spread)")
    return recovery
