"""Ground truth for the privacy lab's scorer (``blindtrain train --record-ground-truth FILE``).

What the trusted side knows and an attacker must not: per training step the true batch ``(x, y)``,
the row order of the step's frame messages (``order[r]`` = the true batch row that frame row ``r`` is;
see :mod:`blindtrain.attacks.recovery`), the true gradients of the model's first and last weights where
the trusted side holds them, and at the end the plaintext ``state_dict`` and the run's model spec.

The file is sealed with the key store exactly like a checkpoint (AES-256-GCM,
:mod:`blindtrain.crypto.keystore`, its own purpose string so a checkpoint is not accepted as ground truth
nor the reverse).  Only :mod:`blindtrain.attacks.score` reads it; attacks never do.

Protocols that permute batch rows call ``runtime.ground_truth.row_order(step, layer, order)`` when
``runtime.ground_truth`` is not ``None``; the default order is the identity.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .crypto import KeyStore
from .errors import UsageError
from .files import atomic_write

FORMAT = 1
PURPOSE = "blindtrain-ground-truth-v1"


@dataclass
class GroundTruth:
    """The unsealed ground truth.

    Attributes:
        model_spec: ``{model, hidden, activation, dataset}`` of the run.
        batches: step -> ``(x (b, *input_shape) float32, y (b,) int64)``, the true batch in batch order.
        orders: step -> {layer: (b,) int64}: frame row ``r`` of that layer's first forward operand at the
            step is true batch row ``orders[step][layer][r]`` (absent: identity).
        gradients: step -> {parameter name: true gradient dL/dθ of that step}, where the trusted side held it.
        model_state: the final plaintext ``state_dict``.
        extra: protocol and options, seed, steps (for the report only).
    """

    model_spec: dict
    batches: dict[int, tuple[np.ndarray, np.ndarray]]
    orders: dict[int, dict[str, np.ndarray]]
    gradients: dict[int, dict[str, np.ndarray]]
    model_state: dict[str, torch.Tensor]
    extra: dict = field(default_factory=dict)

    def order(self, step: int, layer: str) -> np.ndarray:
        """Frame row -> true batch row at ``step`` for ``layer`` (identity if the protocol does not permute)."""
        recorded = self.orders.get(step, {}).get(layer)
        return recorded if recorded is not None else np.arange(len(self.batches[step][1]))

    def framed(self, step: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """The step's true ``(x, y)`` in the row frame of ``layer``'s frame message."""
        x, y = self.batches[step]
        order = self.order(step, layer)
        return x[order], y[order]


class GroundTruthRecorder:
    """Collects ground truth during training (``runtime.ground_truth``); sealed by :meth:`save`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model  # the caller's (unwrapped) model, for the true gradients
        self.batches: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.orders: dict[int, dict[str, np.ndarray]] = {}
        self.gradients: dict[int, dict[str, np.ndarray]] = {}

    def row_order(self, step: int, layer: str, order) -> None:
        """A protocol permuted the rows of ``layer``'s operand at ``step``: row ``r`` sent is true row
        ``order[r]``.  Only the layer's first call per step counts (that is the frame message)."""
        array = order.detach().cpu().numpy() if torch.is_tensor(order) else np.asarray(order)
        self.orders.setdefault(int(step), {}).setdefault(layer, array.astype(np.int64).copy())

    def record_batch(self, step: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.batches[int(step)] = (x.detach().cpu().float().numpy().copy(), y.detach().cpu().long().numpy().copy())

    def record_gradients(self, step: int) -> None:
        """The true gradients of the model's first and last weight (after ``backward``), where they exist on
        the trusted side (a protocol that updates weights on the worker leaves them ``None``)."""
        weights = [(name, p) for name, p in self.model.named_parameters() if p.dim() >= 2]
        chosen = {name: p for name, p in (weights[:1] + weights[-1:])}
        grads = {name: p.grad.detach().cpu().numpy().copy() for name, p in chosen.items()
                 if p.grad is not None and not getattr(p.grad, "sealed", False)}
        if grads:
            self.gradients[int(step)] = grads

    def save(self, path, *, keystore: KeyStore, model_spec: dict, model_state: dict, extra: dict | None = None) -> Path:
        """Seal and write the ground truth (atomically)."""
        steps = sorted(self.batches)
        payload = {
            "format": FORMAT,
            "model_spec": model_spec,
            "batches": {s: (torch.from_numpy(self.batches[s][0]), torch.from_numpy(self.batches[s][1])) for s in steps},
            "orders": {s: {k: torch.from_numpy(v) for k, v in self.orders.get(s, {}).items()} for s in steps},
            "gradients": {s: {k: torch.from_numpy(v) for k, v in g.items()} for s, g in self.gradients.items()},
            "model_state": {k: v.detach().cpu().clone() for k, v in model_state.items()},
            "extra": extra or {},
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return atomic_write(path, keystore.seal(buffer.getvalue(), purpose=PURPOSE))


def load(path, *, keystore: KeyStore) -> GroundTruth:
    """Unseal a ground-truth file (``SealError``, exit 2, if it was modified or sealed under another key)."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read ground truth {path}: {exc.strerror or exc}") from None
    payload = torch.load(io.BytesIO(keystore.unseal(blob, purpose=PURPOSE)), map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise UsageError(f"ground truth {path} has unsupported format {payload.get('format')!r}")
    return GroundTruth(
        model_spec=payload["model_spec"],
        batches={int(s): (x.numpy(), y.numpy()) for s, (x, y) in payload["batches"].items()},
        orders={int(s): {k: v.numpy() for k, v in o.items()} for s, o in payload["orders"].items()},
        gradients={int(s): {k: v.numpy() for k, v in g.items()} for s, g in payload["gradients"].items()},
        model_state=payload["model_state"],
        extra=payload["extra"],
    )


def save_inference(path, *, keystore: KeyStore, model_spec: dict, model_state: dict, x: torch.Tensor,
                   y: torch.Tensor, batch_size: int, extra: dict | None = None) -> Path:
    """Ground truth of an inference run (``blindtrain predict``): inference batch ``i`` (the protocol's step
    ``i``) is ``x[i·batch_size : (i+1)·batch_size]``, rows in order; the model is the one served."""
    recorder = GroundTruthRecorder(torch.nn.Module())
    for step, start in enumerate(range(0, len(y), batch_size)):
        recorder.record_batch(step, x[start:start + batch_size], y[start:start + batch_size])
    return recorder.save(path, keystore=keystore, model_spec=model_spec, model_state=model_state,
                         extra={"inference": True, **(extra or {})})
