"""Attacks on views that hold weights in the clear: ``otp`` (main worker and mask worker), ``slalom``.

:func:`recover` adapts to what the view holds:

1. **model theft** (:mod:`.visible_weights`, :mod:`.visible_theft`): decode every ``public`` weight
   message (fixed point in F_p; modulus from the meta, power-of-two scale inferred), load the latest
   into the architecture, fit the hidden biases on the public split;
2. **gradient leakage** (:mod:`.visible_gradients`): consecutive weights and the known optimizer give
   each step's weight gradients;
3. **label histogram** (:mod:`.visible_labels`): from the classifier's recovered weight gradient;
4. **input reconstruction** by gradient inversion (:mod:`.visible_inversion`) on a few small steps;
5. **masked operands** (:mod:`.visible_masked`): tested for uniformity; read directly only if
   they fail it (a broken pad), so a figure from that read is real leakage, never noise.

It reads only ``messages`` and ``knowledge``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np
import torch

from .recovery import Knowledge, Message, Recovery, frame_messages
from .visible_gradients import recover_gradients
from .visible_labels import class_gradients, counts_from_gradient
from .visible_masked import direct_read, uniformity
from .visible_theft import build_stolen
from .visible_weights import WeightView, read_weights, weighted_layers

#: gradient inversion is attempted on at most this many steps (smallest batches first), bounded in time
INVERSION_STEPS = 2


def recover(messages: Sequence[Message], knowledge: Knowledge, *, invert: bool = True) -> Recovery:
    """Everything the view gives away (see the module docstring)."""
    recovery = Recovery(attack="visible-weights")
    notes = recovery.notes
    view = read_weights(messages, knowledge)
    if view.rejected:
        notes.append(f"{len(view.rejected)} public message(s) not read as weights, e.g. {view.rejected[0]}")
    layers = weighted_layers(knowledge.build_model())
    frames = _frames(messages, knowledge, layers)
    if view.layers:
        latest = view.latest()
        model, theft_notes = build_stolen(knowledge, latest)
        recovery.model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        notes.append("model theft: weights read from public messages: "
                     + "; ".join(s.describe() for s in latest.values()))
        notes += theft_notes
        gradients, gradient_notes = recover_gradients(view, knowledge)
        recovery.gradients = gradients
        notes += gradient_notes
        if gradients:
            _label_counts(recovery, view, model, knowledge, layers, frames)
        if invert and gradients:
            from .visible_inversion import invert_steps

            invert_steps(recovery, view, model, knowledge, frames, steps=INVERSION_STEPS)
    else:
        notes.append("no public weight message in this view: no model, gradients or labels from weights")
    check = uniformity(messages, knowledge)
    if check is not None:
        notes.append("masked operands: " + check.describe())
        structured_frames = [step for step, frame in frames.items() if frame.index in set(check.structured)]
        if structured_frames:
            read = direct_read(messages, knowledge, steps=structured_frames)
            recovery.inputs.update(read.inputs)
            notes.append(f"{len(structured_frames)} frame message(s) fail the uniformity test: read directly "
                         f"as plaintext (steps {structured_frames[:5]}...)")
        else:
            notes.append("masked frames pass the uniformity test: no direct read (it scores at chance; "
                         "see visible_masked.direct_read)")
    return recovery


def _frames(messages, knowledge: Knowledge, layers: dict) -> dict[int, Message]:
    first = next(iter(layers), None)
    return frame_messages(messages, first) if first is not None else {}


def model_at(model: torch.nn.Module, view: WeightView, step: int) -> torch.nn.Module:
    """The stolen model with every layer's weight as the view held it at ``step`` (latest ≤ step)."""
    stepped = copy.deepcopy(model)
    state = stepped.state_dict()
    for layer in view.layers:
        snaps = view.per_step(layer)
        before = [t for t in snaps if t <= step]
        if before:
            snap = snaps[max(before)]
            state[snap.name] = torch.from_numpy(snap.weight).to(state[snap.name].dtype)
    stepped.load_state_dict(state)
    return stepped.eval()


def classifier_layer(layers: dict, num_classes: int) -> str | None:
    """The last weighted layer with ``num_classes`` outputs (the logits)."""
    for name, module in reversed(list(layers.items())):
        if module.weight.shape[0] == num_classes:
            return name
    return None


def _label_counts(recovery: Recovery, view: WeightView, model, knowledge: Knowledge, layers: dict,
                  frames: dict[int, Message]) -> None:
    classifier = classifier_layer(layers, knowledge.num_classes)
    if classifier is None:
        recovery.notes.append("labels: no classifier layer with one output per class")
        return
    key = f"{classifier}.weight"
    start = time.perf_counter()
    for step, grads in sorted(recovery.gradients.items()):
        if key not in grads:
            continue
        batch = int(frames[step].array.shape[0]) if step in frames else int(knowledge.hyper.get("batch_size", 0))
        if batch <= 0:
            continue
        per_class = class_gradients(model_at(model, view, step), classifier, knowledge)
        counts = counts_from_gradient(grads[key], per_class, batch)
        recovery.label_counts[step] = counts
        if counts.max() == batch:  # the histogram pins every row down
            recovery.labels[step] = np.full(batch, int(counts.argmax()), dtype=np.int64)
            recovery.labels_resolved = True
    if recovery.label_counts:
        recovery.notes.append(
            f"label histograms of {len(recovery.label_counts)} steps from {key}'s recovered gradient (NNLS on "
            f"class-conditional per-sample gradients calibrated on the public split at each step's weights, "
            f"biases estimated; batch size from the masked frames; {time.perf_counter() - start:.2f} s); per-row "
            f"labels only where one class fills the batch")
