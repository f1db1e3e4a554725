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
def _output_gradients(messages: Sequence[Message], knowledge: Knowledge) -> dict[int, tuple[np.ndarray, str]]:
    """step -> ``(operand, kind)``: the first output-gradient operand with one column per class (the last
    layer's).  Column blocks sent to several workers of the view (``--workers 2``) are put side by side."""
    groups: dict[tuple, list[Message]] = {}
    for message in messages:
        if message.op in ("grad_input", "backward") and message.operand.startswith("A") and message.array.ndim == 2:
            groups.setdefault((message.step, message.layer, message.op, message.operand, message.role), []).append(message)
    found: dict[int, tuple[np.ndarray, str]] = {}
    for (step, *_), group in groups.items():
        if step in found or len({m.array.shape[0] for m in group}) != 1:
            continue
        blocks = sorted(group, key=lambda m: (m.worker, m.index))
        if len({m.worker for m in blocks}) != len(blocks):  # repeated sends to one worker: take the first
            blocks = [blocks[0]]
        operand = np.concatenate([real(m) for m in blocks], axis=1)
        if operand.shape[1] == knowledge.num_classes:
            found[step] = (operand, blocks[0].kind)
    return found


def labels(messages: Sequence[Message], knowledge: Knowledge) -> Recovery:
    recovery = Recovery(attack="generic.labels")
    kinds = set()
    for step, (operand, kind) in _output_gradients(messages, knowledge).items():
        guess = np.argmin(operand, axis=1).astype(np.int64)
        recovery.labels[step] = guess
        recovery.label_counts[step] = np.bincount(guess, minlength=knowledge.num_classes).astype(np.float64)
        kinds.add(kind)
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


def _oriented(message: Message, param: torch.Tensor) -> np.ndarray:
    values = real(message)
    return values.T if _layout(message, param) == "transposed" else values


def _weight_series(messages: Sequence[Message], param: torch.Tensor, name: str,
                   per_step: dict[int, dict[str, Message]]) -> dict[int, np.ndarray]:
    """step -> the layer's weight in the parameter's layout and scale.  Field values ``W̃ = round(2^l W)`` are
    rescaled by ``2^-l``: ``l`` read at the first step from PyTorch's initialisation bound ``1/sqrt(fan_in)``
    (uniform initial weights fill it), then followed step to step (``l`` moves by at most one while the
    weights move little: the ``l`` that keeps consecutive weights closest)."""
    series: dict[int, np.ndarray] = {}
    exponent = None
    bound = 1.0 / math.sqrt(math.prod(param.shape[1:]))
    for step in sorted(per_step):
        message = per_step[step].get(name)
        if message is None:
            continue
        values = _oriented(message, param)
        if message.modulus is None:
            series[step] = values
            continue
        peak = float(np.abs(values).max()) or 1.0
        if exponent is None or not series:
            exponent = round(math.log2(peak / bound))
        else:
            previous = series[max(series)]
            exponent = min((exponent - 1, exponent, exponent + 1),
                           key=lambda k: float(np.abs(values * 2.0 ** -k - previous).mean()))
        series[step] = values * 2.0 ** -exponent
    return series


def _fit_on_public(model: torch.nn.Module, recovered: set[str], scaled: set[str], knowledge: Knowledge, *,
                   steps: int = 150) -> None:
    """Fit on the public split what the view does not pin down: the parameters that never crossed (biases,
    norms) and, for weights read from fixed-point values (``scaled``), one positive scale per tensor; the
    recovered weights themselves stay as read."""
    free = [p for n, p in model.named_parameters() if n not in recovered]
    log_scales = {n: torch.zeros((), requires_grad=True) for n in scaled}
    if not free and not log_scales:
        return
    base = {n: p.detach().clone() for n, p in model.named_parameters() if n in scaled}
    x = torch.from_numpy(knowledge.public_x[:512])
    y = torch.from_numpy(knowledge.public_y[:512])
    optimizer = torch.optim.Adam(free + list(log_scales.values()), lr=0.01)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        weights = {n: base[n] * log_scales[n].exp() for n in scaled}
        logits = torch.func.functional_call(model, weights, (x,), strict=False)
        penalty = sum((p ** 2).sum() for p in free)  # what never crossed stays small (as trained biases are)
        (torch.nn.functional.cross_entropy(logits, y) + 1e-2 * penalty).backward()
        optimizer.step()
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n in scaled:
            params[n].copy_(base[n] * log_scales[n].exp())
    model.eval()


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


def model(messages: Sequence[Message], knowledge: Knowledge) -> Recovery:
    recovery = Recovery(attack="generic.model")
    replayed = _replay(messages, knowledge, recovery)
    if replayed is not None:
        recovery.model_state = replayed
        return recovery
    victim = knowledge.build_model()
    params = dict(victim.named_parameters())
    per_step = _visible_weights(messages, params)
    latest: dict[str, np.ndarray] = {}
    scaled = set()
    for name in params:
        series = _weight_series(messages, params[name], name, per_step)
        if series:
            latest[name] = series[max(series)]
            at_init = knowledge.hyper.get("training", True) and min(series) == 0
            if not at_init and any(per_step[s][name].modulus is not None for s in series):
                scaled.add(name)  # fixed point never seen at its initialisation: its scale is a guess
    if not latest:
        recovery.notes.append("no weight crossed in a public or clear message: no model claimed")
        return recovery
    with torch.no_grad():
        for name, value in latest.items():
            params[name].copy_(torch.from_numpy(value).to(params[name].dtype))
    _fit_on_public(victim, set(latest), scaled, knowledge)
    recovery.model_state = {k: v.detach().clone() for k, v in victim.state_dict().items()}
    recovery.notes.append(f"read {len(latest)} weight tensors from public/clear messages (the latest of each"
                          + (f"; {len(scaled)} from fixed point, one scale each fitted on the public split" if scaled
                             else "") + f"); fitted the {len(params) - len(latest)} other parameters on the public split")
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
    for name in params:
        series = _weight_series(messages, params[name], name, per_step)
        velocity = None
        for step in sorted(series):
            if step + 1 not in series:
                velocity = None
                continue
            v = (series[step] - series[step + 1]) / lr
            recovery.gradients.setdefault(step, {})[name] = (
                v - momentum * (velocity if velocity is not None else 0.0) - decay * series[step])
            velocity = v
    recovery.notes.append("g_t = (W_t − W_{t+1})/η − μ·v_t − λ·W_t from consecutive visible weights")
    return recovery
