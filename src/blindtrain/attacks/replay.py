"""Replay: a worker that receives the model, every input batch and every logits gradient in the clear
(``plain``) re-runs the training itself and ends with the victim's exact model.

The view of ``plain`` per DESIGN.md: the parameters and buffers cross once when the model is prepared
(``op == "load"``, operand ``B``, one message per ``state_dict`` entry), then per training step the input
batch (``layer == "input"``, ``op == "forward"``) and the gradient of the loss with respect to the logits
(``layer == "logits"``, ``op == "grad_input"``).  With the architecture and the optimizer's
hyper-parameters (part of the attacker's knowledge), ``model(x).backward(dY)`` followed by the same
optimizer step reproduces every update.  Cross-entropy's logits gradient ``(softmax − onehot)/b`` has
exactly one negative entry per row, at the label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .recovery import Knowledge, Message, Recovery


def _optimizer(knowledge: Knowledge, params) -> torch.optim.Optimizer:
    hyper = knowledge.hyper
    lr = float(hyper.get("lr", 0.05))
    weight_decay = float(hyper.get("weight_decay", 0.0))
    if hyper.get("optimizer", "sgd") == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=float(hyper.get("momentum", 0.0)), weight_decay=weight_decay)


def training_pairs(messages: Sequence[Message]) -> list[tuple[Message, Message]]:
    """``(input batch, logits gradient)`` of each training step, in order (evaluation forwards, which have
    no gradient after them, are left out)."""
    pairs, pending = [], None
    for message in messages:
        if message.layer == "input" and message.op == "forward" and message.operand == "A":
            pending = message
        elif message.layer == "logits" and message.op == "grad_input" and pending is not None:
            pairs.append((pending, message))
            pending = None
    return pairs


def recover(messages: Sequence[Message], knowledge: Knowledge) -> Recovery:
    """Labels and inputs of every step in the frame, and the final model by replaying training."""
    recovery = Recovery(attack="replay", labels_resolved=True)
    loads = {m.layer: m for m in messages if m.op == "load"}
    pairs = training_pairs(messages)
    for x, grad in pairs:
        recovery.inputs[x.step] = x.array.astype(np.float32)
        recovery.labels[x.step] = np.asarray(grad.array).argmin(axis=-1).astype(np.int64)
    recovery.notes.append(f"{len(pairs)} training steps seen in the clear (input batch and logits gradient); "
                          "labels are the negative entry of each row of (softmax - onehot)/b")
    if not loads:
        recovery.notes.append("no model crossed in this view: no replay")
        return recovery
    model = knowledge.build_model()
    state = model.state_dict()
    missing = sorted(set(state) - set(loads))
    if missing:
        recovery.notes.append(f"model entries never received: {', '.join(missing)}; no replay")
        return recovery
    model.load_state_dict({name: torch.from_numpy(np.array(loads[name].array)) for name in state})
    optimizer = _optimizer(knowledge, model.parameters())
    model.train()
    for x, grad in pairs:
        optimizer.zero_grad(set_to_none=True)
        model(torch.from_numpy(np.array(x.array))).backward(torch.from_numpy(np.array(grad.array)))
        optimizer.step()
    recovery.model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    recovery.notes.append(f"replayed {len(pairs)} optimizer steps from the received initial model "
                          f"({knowledge.hyper.get('optimizer', 'sgd')}, lr {knowledge.hyper.get('lr')})")
    return recovery
