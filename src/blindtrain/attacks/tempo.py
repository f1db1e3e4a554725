"""Attacks on ``tempo`` by an honest-but-curious main worker (labels, inputs, model), from its transcript.

The mechanism (issue #11): tempo's keys — permutations, ±1 signs, power-of-two scales — are exact float
operations, so every value keeps its mantissa.  The worker's own products come back to it: the input
gradient it returns for layer ℓ+1, ``R = G₁W′``, is decoded by the enclave, masked by the ReLU (exact) and
re-encoded as layer ℓ's gradient operand; so equal mantissas link the batch rows (and hidden units) of
consecutive layers (:mod:`.tempo_links`).  Chained from the last layer to the first, they put every row of
the loss gradient — whose one negative entry per row is the label, the softmax's ``p − 1`` — in the row
order of the first layer's operand, the frame.  The first layer's operand is the data up to power-of-two
row scales, column signs and a column permutation fixed per key epoch (:mod:`.tempo_inputs`); rotations
are linked by the weights the worker already holds; the model is the worker's own W′, replayed from the
transcript, decoded with the same links (:mod:`.tempo_model`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import tempo_inputs as inputs_attack
from .recovery import Knowledge, Message, Recovery
from .tempo_links import link
from .tempo_model import steal_model
from .tempo_rekey import rekey_links
from .tempo_view import View, build_view

#: a row or column link counts when its winning vote holds this share of the matches
VOTE = 0.5


def _conv_params(knowledge: Knowledge) -> dict:
    out = {}
    try:
        model = knowledge.build_model()
    except Exception:  # noqa: BLE001 - an unknown architecture: linear layers need no parameters
        return out
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            out[name] = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation}
    return out


def hyperparameters(knowledge: Knowledge) -> dict:
    """The run's hyper-parameters with the CLI's defaults (:class:`blindtrain.train.TrainConfig`) for what the
    knowledge leaves out, protocol options (``rotate_every``, ``scale_range`` ...) flattened in."""
    from ..protocols.tempo import Tempo
    from ..train import TrainConfig

    defaults = TrainConfig()
    out = {"lr": defaults.lr, "momentum": defaults.momentum, "weight_decay": defaults.weight_decay,
           "optimizer": defaults.optimizer, "loss": defaults.loss, **Tempo.options}
    given = dict(knowledge.hyper or {})
    for key in ("protocol_options", "options"):
        nested = given.pop(key, None)
        if isinstance(nested, dict):
            out.update({k.replace("-", "_"): v for k, v in nested.items()})
    out.update({k.replace("-", "_"): v for k, v in given.items() if v is not None})
    return out


def gradient_operand(ls) -> np.ndarray | None:
    """The gradient operand the worker holds for a layer: G₁ if it crossed, else G₂."""
    return ls.g1 if ls.g1 is not None else ls.g2


def _sigmoid_rows(r: np.ndarray, x: np.ndarray, g: np.ndarray, scale_range: int = 4) -> np.ndarray:
    """Row links through a sigmoid: the enclave's backward is ``dY = dH·(1 − h)·h`` (float32, in that order),
    which changes mantissas.  ``h = |X′| / c_b`` for the right power of two c_b (the upper layer's operand holds
    the sigmoid's output); a power-of-two scale and sign of ``dH`` commute exactly with the product, so for
    each candidate c_b the worker recomputes ``(R·(1 − h))·h`` and links that to the lower layer's gradient
    operand; each row keeps the candidate with the most matches.  Candidates: ``2^e``, |e| ≤ ``scale_range``
    (tempo's public key distribution)."""
    ax = np.abs(np.asarray(x, dtype=np.float32)).reshape(x.shape[0], -1)
    r2 = np.asarray(r, dtype=np.float32).reshape(r.shape[0], -1)
    best_count = np.zeros(len(r2))
    rows = np.full(len(r2), -1, np.int64)
    for e in range(-scale_range, scale_range + 1):
        h = ax * np.float32(2.0 ** -e)
        d = (r2 * (np.float32(1.0) - h)) * h
        lk = link(d.reshape(r.shape), g)
        counts = np.bincount(lk.p_rows[lk.row_map[lk.p_rows] == lk.q_rows], minlength=len(r2))
        better = (counts > best_count) & (lk.row_votes >= VOTE)
        rows[better], best_count[better] = lk.row_map[better], counts[better]
    return rows


def row_chain(view: View, step: int, activation: str = "relu", scale_range: int = 4) -> dict[str, np.ndarray]:
    """For each offloaded layer, the frame row (first layer's forward operand) of each of its batch rows;
    −1 where the chain breaks.  Built from the last layer back: ``R`` of layer ℓ+1 against layer ℓ's
    gradient operand (through a sigmoid: :func:`_sigmoid_rows`)."""
    layers = [name for name in view.layers if name in view.steps[step] and view.steps[step][name].training]
    chain = {}
    if not layers:
        return chain
    first = layers[0]
    g = gradient_operand(view.steps[step][first])
    chain[first] = np.arange(g.shape[0])
    for upper, lower in zip(layers[1:], layers[:-1]):
        ls_up, ls_low = view.steps[step][upper], view.steps[step][lower]
        if ls_up.grad_input is None:
            break
        if activation == "sigmoid":
            rows = _sigmoid_rows(ls_up.grad_input, ls_up.forwards[0], gradient_operand(ls_low), scale_range)
        else:
            lk = link(ls_up.grad_input, gradient_operand(ls_low))
            rows = np.where(lk.row_votes >= VOTE, lk.row_map, -1)
        below = chain[lower]
        chain[upper] = np.where(rows >= 0, below[np.maximum(rows, 0)], -1)
    return chain


def recover(messages: Sequence[Message], knowledge: Knowledge, *, progress: bool | None = None) -> Recovery:
    """Labels, inputs and model of a tempo run from the main worker's view (see the module docstring).

    ``progress``: a progress bar over the steps (``None``: only on a terminal)."""
    rec = Recovery(attack="tempo-mantissa-links")
    hyper = hyperparameters(knowledge)
    view = build_view(messages, hyper, conv_params=_conv_params(knowledge))
    steps = view.training_steps()
    rec.notes.append(f"knowledge: the main role's transcript, the architecture and hyper-parameters, the public split "
                     f"({knowledge.public_split}); tempo's worker code (its products and SGD are recomputed exactly)")
    rec.notes.append(f"view: {len(steps)} training steps, offloaded layers {view.layers}, workers {view.workers}, "
                     f"{'worker-side SGD' if view.resident else 'enclave-side updates'}"
                     f"{', fused activations' if view.fused else ''}")
    if not steps:
        rec.notes.append("no training step in the view: nothing to attack")
        return rec
    last = view.layers[-1]
    raw_labels, raw_counts = {}, {}
    activation = knowledge.model_spec.get("activation", "relu")
    scale_range = int(hyper.get("scale_range", 4))
    for step in tqdm(steps, desc="tempo links", disable=None if progress is None else not progress, leave=False):
        chain = row_chain(view, step, activation, scale_range)
        b = len(chain[view.layers[0]])
        labels = np.full(b, -1, np.int64)
        if last in chain:
            g = gradient_operand(view.steps[step][last])
            guess = g.reshape(g.shape[0], g.shape[1], -1).sum(-1).argmin(1)
            ok = chain[last] >= 0
            labels[chain[last][ok]] = guess[ok]
            raw_counts[step] = np.bincount(guess, minlength=g.shape[1])
        raw_labels[step] = labels
    linked = np.concatenate([lab >= 0 for lab in raw_labels.values()]).mean()
    rec.notes.append("labels: the one negative entry of each row of the last layer's gradient operand "
                     "(softmax − one-hot, scaled by positive powers of two), in the last layer's class order; rows "
                     "put in the frame by mantissa links R = G₁W′ (layer ℓ+1) ↔ gradient operand (layer ℓ)"
                     f"{' through the sigmoid backward recomputed' if activation == 'sigmoid' else ''}: "
                     f"{linked:.3f} of frame rows linked")
    rekeys = rekey_links(view, hyper, scale_range, rec.notes)
    found = inputs_attack.recover_inputs(view, steps, knowledge, rec.notes, rekeys)
    recovered_inputs = rec.inputs = found.inputs
    class_maps = _class_epochs(view, steps, rec.notes, rekeys)
    resolved = _resolve_classes(view, steps, raw_labels, class_maps, recovered_inputs, knowledge, rec.notes)
    rec.labels, rec.labels_resolved, class_of = resolved
    # the batch's label histogram needs no link at all: the last layer's rows, counted per class slot
    for step, counts in raw_counts.items():
        to_class = class_of.get(step) if rec.labels_resolved else class_maps.get(step)
        if to_class is not None and len(to_class) == len(counts):
            hist = np.zeros(knowledge.num_classes, np.int64)
            np.add.at(hist, to_class, counts)
            rec.label_counts[step] = hist
    rec.model_state = steal_model(view, steps, knowledge, hyper, found, class_of, rec.notes, rekeys)
    return rec


def _class_epochs(view: View, steps: list[int], notes: list[str], rekeys: dict) -> dict[int, np.ndarray]:
    """step -> map from that step's class order (the last layer's output permutation) to the first key epoch's
    order, through the re-key links (:mod:`.tempo_rekey`); missing where a link failed."""
    last = view.layers[-1]
    maps: dict[int, np.ndarray] = {}
    current = None
    broken = 0
    for step in steps:
        ls = view.steps[step].get(last)
        if ls is None:
            continue
        if ls.encrypted is not None:
            m = ls.encrypted.shape[0]
            rk = rekeys.get((last, step))
            if current is None:
                current = np.arange(m)
            elif rk is not None:
                new = np.empty(m, np.int64)
                new[rk.rows] = current
                current = new
            else:
                current, broken = None, broken + 1
        if current is not None:
            maps[step] = current
    if broken:
        notes.append(f"labels: {broken} key change(s) of the last layer could not be linked; their class orders "
                     "are resolved separately")
    return maps


def _resolve_classes(view, steps, raw_labels, class_maps, recovered_inputs, knowledge, notes):
    """True class indices: a classifier trained on the public split labels the reconstructed inputs; each
    class slot (of the linked key epochs) takes the true class its rows are most often classified as
    (a linear assignment over the confusion counts)."""
    from scipy.optimize import linear_sum_assignment

    classes = knowledge.num_classes
    groups: dict[tuple, list[int]] = {}
    for step in steps:
        cmap = class_maps.get(step)
        groups.setdefault(("linked",) if cmap is not None else ("step", step), []).append(step)
    clf = _public_classifier(knowledge)
    if clf is None or not recovered_inputs:
        notes.append("labels: no classifier / inputs to resolve the class permutation; labels are up to a permutation")
        out = {}
        for step in steps:
            cmap = class_maps.get(step)
            lab = raw_labels[step]
            out[step] = np.where(lab >= 0, cmap[np.maximum(lab, 0)], -1) if cmap is not None else lab
        return out, False, {}
    out, class_of, unresolved = {}, {}, []
    for key, members in groups.items():
        counts = np.zeros((classes, classes))
        per_step = {}
        for step in members:
            lab = raw_labels[step]
            cmap = class_maps.get(step) if key == ("linked",) else np.arange(classes)
            slot = np.where(lab >= 0, cmap[np.maximum(lab, 0)], -1)
            per_step[step] = slot
            x = recovered_inputs.get(step)
            if x is None:
                continue
            ok = (slot >= 0) & np.isfinite(x.reshape(len(x), -1)).all(1)
            if ok.any():
                pred = clf(x[ok])
                np.add.at(counts, (slot[ok], pred), 1)
        if counts.sum() < 10 * classes:  # too few linked, classified rows to vote: leave this group unresolved
            unresolved.append(key)
            continue
        rows, cols = linear_sum_assignment(-counts)
        to_class = np.full(classes, -1)
        to_class[rows] = cols
        for step, slot in per_step.items():
            out[step] = np.where(slot >= 0, to_class[np.maximum(slot, 0)], -1)
            cmap = class_maps.get(step) if key == ("linked",) else np.arange(classes)
            class_of[step] = to_class[cmap]
    if unresolved:
        notes.append(f"labels: {len(unresolved)} of {len(groups)} group(s) of linked key epochs had too few "
                     "linked rows to resolve the class permutation: no labels there")
        for key in unresolved:
            for step in groups[key]:
                out[step] = np.full(len(raw_labels[step]), -1, np.int64)
    notes.append(f"labels: class permutation resolved by a public-split classifier on the reconstructed inputs "
                 f"({len(groups) - len(unresolved)} group(s) of linked key epochs)")
    return out, True, class_of


def _public_classifier(knowledge: Knowledge):
    """A ridge-regression classifier (one-vs-rest, closed form) on the public split's flattened inputs, or
    None.  It only has to vote: each class slot takes the class most of its many rows are classified as."""
    x = np.asarray(knowledge.public_x, dtype=np.float64).reshape(len(knowledge.public_x), -1)
    y = np.asarray(knowledge.public_y)
    if len(x) == 0 or len(np.unique(y)) < 2:
        return None
    mean, std = x.mean(0), x.std(0) + 1e-6
    features = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    targets = np.eye(knowledge.num_classes)[y]
    gram = features.T @ features + 1.0 * np.eye(features.shape[1])
    weights = np.linalg.solve(gram, features.T @ targets)

    def classify(batch):
        flat = (np.asarray(batch, dtype=np.float64).reshape(len(batch), -1) - mean) / std
        return (np.hstack([flat, np.ones((len(flat), 1))]) @ weights).argmax(1)

    return classify
