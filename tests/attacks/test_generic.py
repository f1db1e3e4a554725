"""The generic attacks: each succeeds where its secret is plainly visible, and scores chance on uniformly
random messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blindtrain.attacks import generic
from blindtrain.attacks.score import score_gradients, score_inputs, score_labels, score_model
from blindtrain.attacks.view import public_split

from .helpers import P, knowledge, message, output_gradient, secret_batches, truth, uniform


@pytest.fixture(scope="module")
def known():
    return knowledge()


@pytest.fixture(scope="module")
def batches(known):
    return secret_batches(known)


def _frames(batches, make):
    return [message(step, step, "1", "forward", "A", *make(step, x)) for step, (x, _) in batches.items()]


# ------------------------------------------------------------------------------------------ labels ----
def test_labels_read_from_a_visible_output_gradient(known, batches):
    view = [message(step, step, "3", "grad_input", "A", "clear", output_gradient(y, seed=step))
            for step, (_, y) in batches.items()]
    figures = score_labels(generic.labels(view, known), truth(batches), "1", 10)
    assert figures["accuracy"] == 1.0 and figures["accuracy_up_to_permutation"] == 1.0
    assert figures["count_error_per_row"] == 0.0


def test_labels_up_to_permutation_when_columns_are_permuted(known, batches):
    perm = np.random.default_rng(3).permutation(10)
    view = [message(step, step, "3", "backward", "A0", "obfuscated", output_gradient(y, seed=step)[:, perm] * 4)
            for step, (_, y) in batches.items()]
    recovery = generic.labels(view, known)
    assert not recovery.labels_resolved
    figures = score_labels(recovery, truth(batches), "1", 10)
    assert figures["accuracy"] is None and figures["accuracy_up_to_permutation"] == 1.0
    assert figures["count_error_per_row"] == 0.0


def test_labels_from_column_blocks_of_several_workers(known, batches):
    """``--workers 2``: each worker gets a block of the output gradient's columns; the role holds both."""
    view = []
    for step, (_, y) in batches.items():
        g = output_gradient(y, seed=step)
        view += [message(2 * step, step, "3", "backward", "A0", "clear", g[:, :5]),
                 message(2 * step + 1, step, "3", "backward", "A0", "clear", g[:, 5:])]
    view = [m.__class__(**{**m.__dict__, "worker": f"main{m.index % 2}"}) for m in view]
    figures = score_labels(generic.labels(view, known), truth(batches), "1", 10)
    assert figures["accuracy"] == 1.0


def test_labels_score_chance_on_uniform_messages(known, batches):
    view = [message(step, step, "3", "grad_input", "A", "masked", uniform((len(y), 10), step), modulus=P)
            for step, (_, y) in batches.items()]
    figures = score_labels(generic.labels(view, known), truth(batches), "1", 10)
    assert figures["accuracy"] <= figures["chance"] + 0.03
    assert figures["accuracy_up_to_permutation"] <= figures["chance_up_to_permutation"] + 0.04


# ------------------------------------------------------------------------------------------ inputs ----
def test_inputs_read_from_a_visible_first_operand_up_to_a_power_of_two(known, batches):
    view = _frames(batches, lambda step, x: ("obfuscated", x.reshape(len(x), -1) * 8.0))
    figures = score_inputs(generic.inputs(view, known), truth(batches), "1", known)
    assert figures["exact_fraction"] == 1.0 and figures["psnr_median"] == math.inf
    assert figures["classifier_accuracy_reconstructed"] == figures["classifier_accuracy_true"]


def test_inputs_follow_the_row_frame(known, batches):
    """A protocol that permutes rows records the order; the scorer compares in the frame."""
    orders = {s: np.random.default_rng(s).permutation(len(y)) for s, (_, y) in batches.items()}
    view = _frames(batches, lambda step, x: ("obfuscated", x[orders[step]].reshape(len(x), -1)))
    figures = score_inputs(generic.inputs(view, known), truth(batches, orders={s: {"1": o} for s, o in orders.items()}),
                           "1", known)
    assert figures["exact_fraction"] == 1.0
    unordered = score_inputs(generic.inputs(view, known), truth(batches), "1", known)
    assert unordered["exact_fraction"] < 0.2


def test_inputs_score_chance_on_uniform_messages(known, batches):
    view = _frames(batches, lambda step, x: ("masked", uniform((len(x), 64), 100 + step)))
    view = [message(m.index, m.step, m.layer, m.op, m.operand, m.kind, m.array, modulus=P) for m in view]
    figures = score_inputs(generic.inputs(view, known), truth(batches), "1", known)
    assert figures["exact_fraction"] == 0.0
    assert figures["psnr_median"] <= figures["chance_psnr_median"]
    assert figures["ssim_mean"] <= figures["chance_ssim_mean"]
    assert figures["classifier_accuracy_reconstructed"] <= figures["chance_classifier_accuracy"] + 0.15


# ----------------------------------------------------------------------------------- model, gradients ----
def _sgd_weights(known, steps=40):
    """A victim trained by SGD with momentum: its weights at every step, the true gradients, the final state."""
    torch.manual_seed(0)
    model = known.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.from_numpy(known.public_x[:64]), torch.from_numpy(known.public_y[:64])
    weights, grads = {}, {}
    for step in range(steps + 1):
        weights[step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 2}
        if step == steps:
            break
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads[step] = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.dim() == 2}
        optimizer.step()
    return weights, grads, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _weight_messages(weights, encode):
    view, index = [], 0
    for step, layers in weights.items():
        for name, w in layers.items():
            view.append(message(index, step, name.split(".")[0], "forward", "B", *encode(w.t().numpy())))
            index += 1
    return view


def test_weights_read_from_fixed_point_messages_followed_from_initialisation(known):
    weights, grads, state = _sgd_weights(known, steps=6)
    view = _weight_messages(weights, lambda w: ("public", np.mod(np.round(w * 2.0**12), P), P))
    params = dict(known.build_model().named_parameters())
    per_step = generic._visible_weights(view, params)
    for name in ("1.weight", "3.weight"):
        series = generic._weight_series(view, params[name], name, per_step)
        for step, w in weights.items():
            assert np.abs(series[step] - w[name].numpy()).max() <= 2.0**-12
    recovery = generic.model(view, known)
    assert recovery.model_state is not None
    assert float((recovery.model_state["1.weight"] - state["1.weight"]).abs().max()) <= 2.0**-12


def test_gradients_from_consecutive_clear_weights(known):
    weights, grads, state = _sgd_weights(known, steps=6)
    view = _weight_messages(weights, lambda w: ("public", w))
    figures = score_gradients(generic.gradients(view, known), truth({}, gradients=grads))
    assert figures["cosine_mean"] > 0.999 and figures["relative_error_median"] < 1e-2


def test_model_and_gradients_score_chance_on_uniform_messages(known):
    weights, grads, state = _sgd_weights(known)
    view = _weight_messages(weights, lambda w: ("public", uniform(w.shape, int(w.shape[0])), P))
    _, held_out, _ = public_split("digits", seed=0)
    figures = score_model(generic.model(view, known), truth({}, model_state=state), known, held_out)
    assert figures["agreement"] < figures["chance_agreement"]
    assert figures["test_accuracy"] < figures["chance_test_accuracy"]
    gradient_figures = score_gradients(generic.gradients(view, known), truth({}, gradients=grads))
    assert abs(gradient_figures["cosine_mean"]) < 0.1
