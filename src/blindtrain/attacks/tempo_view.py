"""What a curious ``tempo`` worker holds, step by step: its transcript parsed per layer, and its own state
replayed (the obfuscated weights W′ it stores and updates, the operands it keeps, the products it returns).

Everything here is computed from the messages alone, with the worker's own instructions
(:mod:`blindtrain.bilinear`, torch's SGD recurrence as ``sgd_step`` runs it) and the public
hyper-parameters: exactly what the worker could compute.  Several main workers (``--workers N``) each hold
a block of W′'s output rows; the attacker controlling the main role sees every block and joins them.

Shapes (Linear layer, weight m×n, batch b; conv: channels play m and n, spatial dims trail):

* ``forward``:  X′ (b×n) = ``(c_b X s)[π_b][:, π_n]``; the worker returns Y′ = X′W′ᵀ (b×m).
* ``g1``:       G₁ (b×m) = ``(c′_b dY / c)[π_b][:, π_m]``; the worker returns R = G₁W′ (b×n) =
  ``(c′_b dX s)[π_b][:, π_n]``.
* ``rows``/``cols`` (public): ``(1/(c_b c′_b))[π_b]`` and ``(c²)[π_m]``; G₂ = G₁ ⊙ rows ⊗ cols.
* ``g2``:       G₂ sent as such (first layer, or enclave-side updates) = ``(dY c / c_b)[π_b][:, π_m]``.
* ``encrypt``:  W′ (m×n) = ``(c W s)[π_m][:, π_n]`` (and the momentum buffer in the same key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import bilinear
from .recovery import Message


@dataclass
class LayerStep:
    """One layer's part of one step, as the worker saw it (blocks of several workers joined)."""

    forwards: list[np.ndarray] = field(default_factory=list)   #: X′ of each forward (training first)
    bias: np.ndarray | None = None           #: fused forward's obfuscated bias ``(c b)[π_m]`` (1×m)
    fused_out: np.ndarray | None = None      #: fused forward: what the worker returned (b×m, activated)
    product: np.ndarray | None = None        #: unfused forward: Y′ = X′W′ᵀ (b×m), the worker's own result
    g1: np.ndarray | None = None
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    g2: np.ndarray | None = None
    grad_input: np.ndarray | None = None     #: R = G₁W′ (b×n), as the enclave sums the workers' parts
    encrypted: np.ndarray | None = None      #: W′ sent this step (a new key epoch), joined
    weight_before: np.ndarray | None = None  #: the W′ the worker held just before ``encrypted`` replaced it
    weight_after: np.ndarray | None = None   #: W′ the worker holds after this step (updated by it under SGD)
    weight_grad: np.ndarray | None = None    #: enclave-side updates: the gradient G₂ᵀX′ the worker returned
    epoch: int = 0                           #: key epoch index of this layer at this step

    @property
    def training(self) -> bool:
        return self.g1 is not None or self.g2 is not None


@dataclass
class View:
    layers: list[str]                        #: offloaded layers in forward order
    steps: dict[int, dict[str, LayerStep]]   #: step -> layer -> what crossed
    workers: list[str]
    conv: dict[str, bool]
    resident: bool                           #: SGD on the worker (no W′ re-sent every step)
    fused: bool

    def training_steps(self) -> list[int]:
        return [s for s in sorted(self.steps) if any(ls.training for ls in self.steps[s].values())]


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


class _Worker:
    """One main worker's held tensors, replayed with the worker's own instructions."""

    def __init__(self) -> None:
        self.weight: dict[str, torch.Tensor] = {}
        self.buffer: dict[str, torch.Tensor | None] = {}
        self.held_x: dict[str, torch.Tensor] = {}
        self.grad: dict[str, torch.Tensor] = {}
        self.grad_operand: torch.Tensor | None = None   # the last G₁ received, until its rank-one factor comes
        self.rows: torch.Tensor | None = None

    def sgd(self, layer: str, hyper: dict) -> None:
        """torch.optim.SGD's recurrence, op for op as ``sgd_step`` runs it."""
        grad = self.grad.pop(layer, None)
        if grad is None:
            return
        param = self.weight[layer]
        lr, wd = float(hyper.get("lr", 0.05)), float(hyper.get("weight_decay", 0.0) or 0.0)
        momentum, damp = float(hyper.get("momentum", 0.0) or 0.0), float(hyper.get("dampening", 0.0) or 0.0)
        if wd != 0:
            grad = grad.add(param, alpha=wd)
        if momentum != 0:
            buf = self.buffer.get(layer)
            if buf is None:
                buf = torch.clone(grad).detach()
                self.buffer[layer] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - damp)
            grad = grad.add(buf, alpha=momentum) if hyper.get("nesterov", False) else buf
        param.add_(grad, alpha=-lr)


def _conv_layers(messages: Sequence[Message]) -> dict[str, bool]:
    conv = {}
    for m in messages:
        if m.op == "encrypt" and m.operand == "W":
            conv[m.layer] = m.array.ndim == 4
    return conv


def build_view(messages: Sequence[Message], hyper: dict, *, conv_params: dict | None = None) -> View:
    """Parse the transcript and replay the workers' state (see the module docstring).

    ``conv_params``: layer -> ``{stride, padding, ...}`` of conv layers (the architecture is known).
    The replay runs single-threaded: the products are small, and threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build_view(messages, hyper, conv_params=conv_params)
    finally:
        torch.set_num_threads(threads)


def _build_view(messages: Sequence[Message], hyper: dict, *, conv_params: dict | None = None) -> View:
    conv_params = conv_params or {}
    main = [m for m in messages if m.worker.startswith("main")]
    workers = sorted({m.worker for m in main})
    conv = _conv_layers(main)
    layers: list[str] = []
    for m in main:
        if m.op == "forward" and m.operand == "A" and m.layer not in layers:
            layers.append(m.layer)
    fused = any(m.op == "forward" and m.operand == "C" for m in main)
    resident = not any(m.op == "grad_input" for m in main)
    state = {w: _Worker() for w in workers}
    steps: dict[int, dict[str, LayerStep]] = {}
    epochs = {name: -1 for name in layers}
    by_step: dict[int, list[Message]] = {}
    for m in main:
        by_step.setdefault(m.step, []).append(m)

    def fn_params(layer):
        return {k: v for k, v in conv_params.get(layer, {}).items() if k in ("stride", "padding", "dilation")}

    for step in sorted(by_step):
        view = steps.setdefault(step, {})
        # group the step's messages per (layer, op) occurrence, keeping the per-worker blocks together
        fused_now = _fused_layers(by_step[step])
        for m in by_step[step]:
            if m.layer not in layers:
                continue
            ls = view.setdefault(m.layer, LayerStep(epoch=max(epochs[m.layer], 0)))
            w = state[m.worker]
            a = _t(m.array)
            if m.op == "encrypt":
                if m.operand == "W":
                    if m.worker == workers[0]:
                        epochs[m.layer] += 1
                        ls.epoch = epochs[m.layer]
                        if m.layer in w.weight:
                            ls.weight_before = _join(state, workers, "weight", m.layer)
                    w.weight[m.layer] = a.clone()
                    w.buffer[m.layer] = None
                    ls.encrypted = a.numpy() if ls.encrypted is None else np.concatenate([ls.encrypted, a.numpy()])
                elif m.operand == "M":
                    w.buffer[m.layer] = a.clone()
            elif m.op == "forward" and m.operand == "A":
                if m.worker == workers[0]:
                    ls.forwards.append(m.array)
                w.held_x[m.layer] = a
                if len(ls.forwards) == 1 and m.layer not in fused_now:
                    weight = w.weight[m.layer]
                    y = (torch.matmul(a, weight.transpose(-2, -1)) if not conv.get(m.layer) else
                         bilinear.apply("conv2d", a, weight, **fn_params(m.layer)))
                    ls.product = _cat(ls.product, y.numpy())
            elif m.op == "forward" and m.operand == "C":
                if len(ls.forwards) != 1:
                    continue  # a later forward of the step (evaluation batches): only the first is kept
                ls.bias = _cat(ls.bias, m.array, axis=1)
                x, weight = w.held_x[m.layer], w.weight[m.layer]
                y = torch.matmul(x, weight.transpose(-2, -1)) if not conv.get(m.layer) else \
                    bilinear.apply("conv2d", x, weight, **fn_params(m.layer))
                ls.fused_out = _cat(ls.fused_out, torch.relu(y + a).numpy(), axis=1)
            elif m.op in ("backward", "grad_input") and m.operand in ("A0", "A"):
                ls.g1 = _cat(ls.g1, m.array, axis=1)
                w.grad_operand = a
                if conv.get(m.layer):
                    part = bilinear.apply("conv2d_input", a, w.weight[m.layer],
                                          input_size=tuple(w.held_x[m.layer].shape), **fn_params(m.layer))
                else:
                    part = torch.matmul(a, w.weight[m.layer])
                # the enclave sums the workers' partial products in worker order
                ls.grad_input = part.numpy() if ls.grad_input is None else (_t(ls.grad_input) + part).numpy()
            elif m.op == "backward" and m.operand == "rows1":
                ls.rows = m.array if ls.rows is None else ls.rows
                w.rows = a
            elif m.op == "backward" and m.operand == "cols1":
                ls.cols = _cat(ls.cols, m.array, axis=0)
                g2 = w.grad_operand * _rows(w.rows, w.grad_operand) * _cols(a, w.grad_operand)
                w.grad[m.layer] = _grad_weight(g2, w.held_x[m.layer], w.weight[m.layer], conv.get(m.layer),
                                               fn_params(m.layer))
            elif m.op == "grad_weight" and m.operand in ("A", "B"):
                ls.g2 = _cat(ls.g2, m.array, axis=1)
                grad = _grad_weight(a, w.held_x[m.layer], w.weight[m.layer], conv.get(m.layer), fn_params(m.layer))
                if resident:
                    w.grad[m.layer] = grad
                else:  # returned to the enclave, which updates the plaintext weights itself
                    ls.weight_grad = _cat(ls.weight_grad, grad.numpy(), axis=0)
        if not resident:
            for name, ls in view.items():
                if ls.training:
                    ls.weight_after = _join(state, workers, "weight", name)
        if resident:
            for w in state.values():
                for name in list(w.grad):
                    w.sgd(name, hyper)
            for name, ls in view.items():
                if ls.training:
                    ls.weight_after = _join(state, workers, "weight", name)
    return View(layers=layers, steps=steps, workers=workers, conv=conv, resident=resident, fused=fused)


def _rows(rows, g):
    return rows.reshape(-1, *([1] * (g.dim() - 1)))


def _cols(cols, g):
    return cols.reshape(1, -1, *([1] * (g.dim() - 2)))


def _grad_weight(g2, x, weight, conv, params):
    """The weight gradient the worker computes and keeps: ``G₂ᵀX′`` (conv: ``conv2d_weight``)."""
    if conv:
        return bilinear.apply("conv2d_weight", x, g2, weight_size=tuple(weight.shape), **params)
    return bilinear.apply("matmul_tn", g2, x)


def _fused_layers(messages: list[Message]) -> set[str]:
    return {m.layer for m in messages if m.op == "forward" and m.operand == "C"}


def _cat(old, new, axis=1):
    return new if old is None else np.concatenate([old, new], axis=axis)


def _join(state: dict, workers: list[str], what: str, layer: str) -> np.ndarray:
    parts = [getattr(state[w], what)[layer].numpy().copy() for w in workers if layer in getattr(state[w], what)]
    return np.concatenate(parts, axis=0)
