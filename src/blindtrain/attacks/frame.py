"""Small helpers every attack (and the scorer) uses to find its way in a transcript."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .recovery import Message, frame_messages


def first_layer(messages: Sequence[Message]) -> str | None:
    """The model's first offloaded layer: the layer of the first ``forward`` operand ``A`` the main role
    received (any role if the main role is not in the view).  ``None`` if nothing was offloaded."""
    for preferred in (True, False):
        for message in messages:
            if message.op == "forward" and message.operand == "A" and (message.role == "main") == preferred:
                return message.layer
    return None


def frames(messages: Sequence[Message]) -> dict[int, Message]:
    """step -> the step's frame message (:func:`blindtrain.attacks.recovery.frame_messages`), main role first."""
    layer = first_layer(messages)
    if layer is None:
        return {}
    main = [m for m in messages if m.role == "main"]
    return frame_messages(main or messages, layer)


def real(message: Message) -> np.ndarray:
    """The message's values as float64: field elements ``v`` in ``[0, p)`` centred to ``(−p/2, p/2]``."""
    values = message.array.astype(np.float64)
    if message.modulus is not None:
        p = float(message.modulus)
        values = np.where(values > p / 2, values - p, values)
    return values


def power_of_two_scale(values: np.ndarray, target_std: float) -> float:
    """The power of two ``2^k`` that brings ``values``' standard deviation closest to ``target_std``
    (exact in floating point: it undoes fixed-point encodings and power-of-two blinding scales)."""
    std = float(np.std(values))
    if not (math.isfinite(std) and math.isfinite(target_std)) or std == 0.0 or target_std <= 0.0:
        return 1.0
    return float(2.0 ** round(math.log2(target_std / std)))
