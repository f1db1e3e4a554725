"""The simple attacks, run on every protocol: each reads a secret where a protocol leaves it in view.

They are the baseline any protocol is measured against (a protocol that scores below them needs an argument):

* :func:`labels` — cross-entropy's output gradient ``(softmax(z) − onehot(y)) / b`` has exactly one negative
  entry per row, at the label: the label is the row's arg-min.  Read from the last layer's output-gradient
  operand (``grad_input`` / ``backward`` operand ``A`` with one column per class).
* :func:`inputs` — the first layer's forward operand ``A`` read directly, reshaped to the input shape and
  rescaled by the power of two that matches the public split's standard deviation (undoes fixed-point
  encodings and power-of-two blinding scales; identity on clear data).
* :func:`model` — the weights where they cross in ``public`` / ``clear`` messages (the latest of each
  layer; field values centred and rescaled to PyTorch's initialisation bound), parameters that never cross
  (biases) fitted on the public split with the recovered weights frozen.  When the whole model is handed to
  the worker once (``op == "load"``: ``plain``) and then trained there from clear inputs and clear output
  gradients, the attack replays the worker's own training and ends with the worker's model.
* :func:`gradients` — consecutive visible weights give the optimizer's update, and with the public
  hyper-parameters the gradient: ``v_{t+1} = (W_t − W_{t+1}) / η``, ``g_t = v_{t+1} − μ v_t − λ W_t`` (SGD with
  momentum μ, weight decay λ); under a replay, the replay's own gradients.

Every attack returns a guess for every row it can (never abstains on garbage), so on uniformly random
messages it scores chance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .frame import first_layer, frames, power_of_two_scale, real
from .recovery import Knowledge, Message, Recovery

_VISIBLE = ("public", "clear")


# ----------------------------------------------------------------------------------------- labels ----
def _output_gradients(messages: Sequence[Message], knowledge: Knowledge) -> dict[int, Message]:
    """step -> the first output-gradient operand with one column per class (the last layer's)."""
    found: dict[int, Message] = {}
    for message in messages:
        array = message.array
        if (message.op in ("grad_input", "backward") and message.operand.startswith("A") and array.ndim == 2
                and array.shape[1] == knowledge.num_classes and message.step not in found):
            found[message.step] = message
    return found


def labels(messages: Sequence[Message], knowledge: Knowledge) -> Recovery:
    recovery = Recovery(attack="generic.labels")
    kinds = set()
    for step, message in _output_gradients(messages, knowledge).items():
        guess = np.argmin(real(message), axis=1).astype(np.int64)
        recovery.labels[step] = guess
        recovery.label_counts[step] = np.bincount(guess, minlength=knowledge.num_classes).astype(np.float64)
        kinds.add(message.kind)
    # columns keep the class order unless the protocol permutes them (obfuscated): then only up to permutation
    recovery.labels_resolved = bool(kinds) and "obfuscated" not in kinds
    recovery.notes.append("label = arg-min of each row of the last layer's output-gradient operand "
                          f"(kinds seen: {', '.join(sorted(kinds)) or 'none'}; rows taken in the message's order)")
    return recovery


# ----------------------------------------------------------------------------------------- inputs ----
def inputs(messages: Sequence[Message], knowledge: Knowledge) -> Recovery:
    recovery = Recovery(attack="generic.inputs")
    numel = math.prod(knowledge.input_shape)
    target_std = float(np.std(knowledge.public_x))
    for step, message in frames(messages).items():
        values = real(message)
        b = values.shape[0]
        if values.size != b * numel:
            recovery.inputs[step] = np.full((b, *knowledge.input_shape), np.nan, dtype=np.float32)
            continue
        scale = power_of_two_scale(values, target_std)
        recovery.inputs[step] = (values * scale).reshape(b, *knowledge.input_shape).astype(np.float32)
    recovery.notes.append("input = the first layer's forward operand as received, reshaped, times the power of "
                          "two matching the public split's standard deviation")
    return recovery


# ------------------------------------------------------------------------------------------ model ----
def _visible_weights(messages: Sequence[Message], params: dict[str, torch.Tensor]) -> dict[int, dict[str, Message]]:
    """step -> {parameter name: the first visible message at that step holding it (any layout)}."""
    out: dict[int, dict[str, Message]] = {}
    for message in messages:
        if message.kind not in _VISIBLE or message.op == "load":
            continue
        name = f"{message.layer}.weight"
        if name in params and _layout(message, params[name]) is not None:
            out.setdefault(message.step, {}).setdefault(name, message)
    return out


def _layout(message: Message, param: torch.Tensor) -> str | None:
    """How ``message`` holds ``param``: ``"same"``, ``"transposed"`` (a Linear weight as the forward's
    right operand ``Wᵀ``) or ``None`` (it does not)."""
    shape, target = tuple(message.array.shape), tuple(param.shape)
    if param.dim() == 2 and message.op == "forward" and shape == target[::-1]:
        return "transposed"
    if shape == target:
        return "same"
    return None


def _weight_value(message: Message, param: torch.Tensor) -> np.ndarray:
    values = real(message)
    if _layout(message, param) == "transposed":
        values = values.T
    if message.modulus is not None:  # fixed point: W̃ = round(2^l W); 2^-l from the initialisation bound
        fan_in = math.prod(param.shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        peak = float(np.abs(values).max())
        if peak > 0:
            values = values * 2.0 ** round(math.log2(bound / peak))
    return values


def _replay(messages: Sequence[Message], knowledge: Knowledge, recovery: Recovery) -> dict | None:
    """``plain``: the model is loaded on the worker in the clear and trained there; replay that training."""
    initial = {m.layer: m.array for m in messages if m.op == "load" and m.kind == "clear"}
    model = knowledge.build_model()
    state = model.state_dict()
    if not initial or set(initial) != set(state):
        return None
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in initial.items()})
    inputs_at = {m.step: m for m in messages if m.op == "forward" and m.operand == "A" and m.kind == "clear"
                 and m.layer == first_layer(messages)}
    grads_at = {m.step: m for m in messages if m.op == "grad_input" and m.kind == "clear" and m.layer == "logits"}
    hyper = knowledge.hyper
    optimizer = (torch.optim.Adam(model.parameters(), lr=hyper["lr"], weight_decay=hyper["weight_decay"])
                 if hyper.get("optimizer") == "adam" else
                 torch.optim.SGD(model.parameters(), lr=hyper["lr"], momentum=hyper["momentum"],
                                 weight_decay=hyper["weight_decay"]))
    weights = [name for name, p in model.named_parameters() if p.dim() >= 2]
    model.train()
    for step in sorted(set(inputs_at) & set(grads_at)):
        optimizer.zero_grad(set_to_none=True)
        logits = model(torch.from_numpy(np.array(inputs_at[step].array)))
        logits.backward(torch.from_numpy(np.array(grads_at[step].array)))
        params = dict(model.named_parameters())
        recovery.gradients[step] = {n: params[n].grad.detach().numpy().copy() for n in weights}
        optimizer.step()
    recovery.notes.append(f"replayed the worker's training: initial model from {len(initial)} 'load' messages, "
                          f"{len(set(inputs_at) & set(grads_at))} steps of clear inputs and output gradients")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit_missing(model: torch.nn.Module, recovered: set[str], knowledge: Knowledge, *, steps: int = 150) -> None:
    """Fit the parameters that never crossed (biases, norms) on the public split, recovered weights frozen."""
    free = [p for n, p in model.named_parameters() if n not in recovered]
    if not free:
        return
    for n, p in model.named_parameters():
        p.requires_grad_(n not in recovered)
    x = torch.from_numpy(knowledge.public_x[:512])
    y = torch.from_numpy(knowledge.public_y[:512])
    optimizer = torch.optim.Adam(free, lr=0.01)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)


def model(messages: Sequence[Message], knowledge: Knowledge) -> Recovery:
    recovery = Recovery(attack="generic.model")
    replayed = _replay(messages, knowledge, recovery)
    if replayed is not None:
        recovery.model_state = replayed
        return recovery
    victim = knowledge.build_model()
    params = dict(victim.named_parameters())
    latest: dict[str, Message] = {}
    for step_weights in _visible_weights(messages, params).values():
        latest.update(step_weights)
    if not latest:
        recovery.notes.append("no weight crossed in a public or clear message: no model claimed")
        return recovery
    with torch.no_grad():
        for name, message in latest.items():
            params[name].copy_(torch.from_numpy(_weight_value(message, params[name])).to(params[name].dtype))
    _fit_missing(victim, set(latest), knowledge)
    recovery.model_state = {k: v.detach().clone() for k, v in victim.state_dict().items()}
    recovery.notes.append(f"read {len(latest)} weight tensors from public/clear messages (the latest of each); "
                          f"fitted the {len(params) - len(latest)} other parameters on the public split")
    return recovery


# -------------------------------------------------------------------------------------- gradients ----
def gradients(messages: Sequence[Message], knowledge: Knowledge) -> Recovery:
    recovery = Recovery(attack="generic.gradients")
    if _replay(messages, knowledge, recovery) is not None:
        return recovery
    hyper = knowledge.hyper
    if hyper.get("optimizer") == "adam" or not hyper.get("training", True):
        recovery.notes.append("no gradients: the optimizer is not linear in the gradient, or no training run")
        return recovery
    params = dict(knowledge.build_model().named_parameters())
    per_step = _visible_weights(messages, params)
    lr, momentum, decay = float(hyper["lr"]), float(hyper["momentum"]), float(hyper["weight_decay"])
    velocity: dict[str, np.ndarray] = {}
    steps = sorted(per_step)
    for step, following in zip(steps, steps[1:]):
        if following != step + 1:
            velocity.clear()
            continue
        for name, message in per_step[step].items():
            if name not in per_step[following]:
                continue
            now, nxt = _weight_value(message, params[name]), _weight_value(per_step[following][name], params[name])
            v = (now - nxt) / lr
            grad = v - momentum * velocity.get(name, 0.0) - decay * now
            velocity[name] = v
            recovery.gradients.setdefault(step, {})[name] = grad
    recovery.notes.append("g_t = (W_t − W_{t+1})/η − μ·v_t − λ·W_t from consecutive visible weights")
    return recovery
