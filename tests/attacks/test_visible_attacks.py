"""Attacks on the field protocols whose worker sees the weights (``otp``, ``slalom``).

The victim runs through the public Python API with a transcript (:mod:`blindtrain.attacks.visible_measure`);
the ground truth (true batches, true weight gradients, final weights) is recorded on the trusted side
and used only to score, never handed to the attack.
The attacker gets only :class:`Message` objects and :class:`Knowledge` (architecture,
hyper-parameters, a public split: the first half of digits' test split; scoring uses the other half).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from blindtrain.attacks.recovery import Message
from blindtrain.attacks.visible import recover
from blindtrain.attacks.visible_masked import direct_read, uniformity
from blindtrain.attacks.visible_measure import (agreement, cosine, misassigned, scored_accuracy, serve_slalom,
                                                train_otp)


def uniform_like(messages: list[Message], seed: int = 0) -> list[Message]:
    """The same meta, every array replaced by uniform field elements (int64: a narrower wire dtype, such as
    otp's int32 weights, cannot hold them)."""
    rng = np.random.default_rng(seed)
    return [replace(m, array=rng.integers(0, m.modulus, size=m.array.shape, dtype=np.int64), dtype="int64")
            for m in messages]


# -- otp ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def otp_run(tmp_path_factory):
    views, knowledge, truth = train_otp(tmp_path_factory.mktemp("otp"), steps=12, unmask="mask-worker")
    return views, knowledge, truth, recover(views["main"], knowledge, invert=False)


def test_otp_model_stolen_at_the_victims_accuracy(otp_run):
    views, knowledge, truth, recovery = otp_run
    assert recovery.model_state is not None
    stolen = scored_accuracy(recovery.model_state, knowledge)
    assert stolen >= truth.accuracy - 0.05
    assert agreement(recovery.model_state, truth.state, knowledge) >= 0.85
    for name, value in truth.state.items():  # the weights themselves, to their fixed-point rounding
        if name.endswith("weight"):
            step = 2.0 ** -_exponent(recovery, name)
            assert np.abs(recovery.model_state[name].numpy() - value.numpy()).max() <= step


def _exponent(recovery, name: str) -> int:
    note = next(n for n in recovery.notes if n.startswith("model theft"))
    return int(note.split(f"{name} at step")[1].split("scale 2^-")[1].split(")")[0])


def test_otp_gradients_exact_up_to_the_weights_rounding(otp_run):
    views, knowledge, truth, recovery = otp_run
    assert sorted(recovery.gradients) == list(range(12))
    lr, momentum = knowledge.hyper["lr"], knowledge.hyper["momentum"]
    for step, grads in recovery.gradients.items():
        assert set(grads) == {"1.weight", "3.weight"}
        for name, grad in grads.items():
            # the weights' fixed-point step, or the float32 rounding of the victim's own update if coarser
            # (with a 61-bit field the encoding is finer than the float32 weights it encodes)
            weight_ulp = float(np.spacing(np.float32(np.abs(truth.state[name].numpy()).max())))
            bound = (1 + momentum) * 2 * max(2.0 ** -_exponent(recovery, name), weight_ulp) / lr
            assert np.abs(grad - truth.grads[step][name]).max() <= bound
        assert cosine(grads["3.weight"], truth.grads[step]["3.weight"]) > 0.99


def test_otp_gradients_under_nesterov_and_weight_decay(tmp_path):
    views, knowledge, truth = train_otp(tmp_path, steps=6, nesterov=True, weight_decay=1e-3)
    recovery = recover(views["main"], knowledge, invert=False)
    assert sorted(recovery.gradients) == list(range(6))
    for step, grads in recovery.gradients.items():
        for name, grad in grads.items():
            bound = (1 + 0.9) * 2.0 ** -_exponent(recovery, name) / 0.05 + 1e-3 * 2.0 ** -_exponent(recovery, name)
            assert np.abs(grad - truth.grads[step][name]).max() <= bound
        assert cosine(grads["3.weight"], truth.grads[step]["3.weight"]) > 0.99


def test_otp_adam_gives_the_gradient_signs_at_the_first_step(tmp_path):
    views, knowledge, truth = train_otp(tmp_path, steps=3, optimizer="adam", lr=1e-3)
    recovery = recover(views["main"], knowledge, invert=False)
    assert any("Adam" in note for note in recovery.notes)
    for name in ("1.weight", "3.weight"):  # the update at step 0 is lr·g/(|g|+ε): the sign of g
        true_sign = np.sign(truth.grads[0][name])
        assert cosine(np.sign(recovery.gradients[0][name]), true_sign) > 0.9


def _synthetic_view(truth, modulus: int | None, steps: int) -> list[Message]:
    """The otp main view as a field engine with a ~2^61 prime would send it (int64 residues, ~30-bit weights;
    exponents alternate between steps), built from the recorded weights; frames uniform in F_p.
    ``modulus=None``: a protocol that sends the weights as plain float32 ``public`` messages."""
    rng = np.random.default_rng(1)
    messages = []
    states = [truth.states[t] for t in range(steps)] + [truth.state]
    for step, state in enumerate(states):
        if modulus is not None:
            frame = rng.integers(0, modulus, size=(64, 64), dtype=np.int64)
            messages.append(Message(index=len(messages), key="", step=step, layer="1", op="forward", operand="A",
                                    kind="masked", dtype="int64", modulus=modulus, worker="main0", role="main",
                                    array=frame))
        for layer in ("1", "3"):
            weight = state[f"{layer}.weight"].double().numpy().T
            if modulus is None:
                encoded = weight.astype(np.float32)
            else:
                encoded = np.mod(np.rint(weight * 2.0 ** (30 + step % 2)).astype(np.int64), modulus)
            messages.append(Message(index=len(messages), key="", step=step, layer=layer, op="forward",
                                    operand="B", kind="public", dtype=str(encoded.dtype), modulus=modulus,
                                    worker="main0", role="main", array=encoded))
    return messages


def test_larger_primes_are_read_from_the_meta_and_give_exact_gradients(otp_run):
    views, knowledge, truth, _ = otp_run
    modulus = 2**61 - 1
    recovery = recover(_synthetic_view(truth, modulus, 12), knowledge, invert=False)
    assert "scale 2^-30" in next(n for n in recovery.notes if n.startswith("model theft"))  # step 12: even
    for step in range(12):
        for name in ("1.weight", "3.weight"):
            assert cosine(recovery.gradients[step][name], truth.grads[step][name]) > 0.999999


def test_weights_sent_as_plain_floats_are_read_too(otp_run):
    views, knowledge, truth, _ = otp_run
    recovery = recover(_synthetic_view(truth, None, 12), knowledge, invert=False)
    assert "floats in the clear" in next(n for n in recovery.notes if n.startswith("model theft"))
    assert np.abs(recovery.model_state["1.weight"].numpy() - truth.state["1.weight"].numpy()).max() < 1e-6
    assert min(cosine(recovery.gradients[s]["3.weight"], truth.grads[s]["3.weight"]) for s in range(12)) > 0.999


def test_otp_label_histogram_recovered(otp_run):
    views, knowledge, truth, recovery = otp_run
    assert sorted(recovery.label_counts) == list(range(12))
    errors = [misassigned(counts, truth.labels[step]) for step, counts in recovery.label_counts.items()]
    assert all(counts.sum() == 64 for counts in recovery.label_counts.values())
    prior = np.bincount(knowledge.public_y, minlength=10) / len(knowledge.public_y)
    chance = [misassigned(np.round(prior * 64), truth.labels[step]) for step in recovery.label_counts]
    assert np.mean(errors) <= np.mean(chance) / 4, (errors, chance)  # the public class prior as the guess: chance
    assert not recovery.labels  # no single-class batch: no per-row claim


def test_otp_mask_worker_view_gives_the_model_and_gradients_too(otp_run):
    views, knowledge, truth, _ = otp_run
    assert {m.kind for m in views["mask"]} == {"pad", "public"}
    recovery = recover(views["mask"], knowledge, invert=False)
    assert scored_accuracy(recovery.model_state, knowledge) >= truth.accuracy - 0.05
    assert cosine(recovery.gradients[3]["3.weight"], truth.grads[3]["3.weight"]) > 0.99


# -- slalom ---------------------------------------------------------------------------------------------

def test_slalom_worker_holds_the_model(tmp_path):
    messages, knowledge, truth = serve_slalom(tmp_path)
    recovery = recover(messages, knowledge)
    assert recovery.model_state is not None and not recovery.gradients and not recovery.label_counts
    assert scored_accuracy(recovery.model_state, knowledge) >= truth.accuracy - 0.03
    assert agreement(recovery.model_state, truth.state, knowledge) >= 0.95
    assert not recovery.inputs  # inputs stay under fresh pads


@pytest.mark.slow
def test_slalom_sigmoid_layer_scales_fitted_on_public_data(tmp_path, monkeypatch):
    """Sigmoid is not positively homogeneous: the init prior's scales cost accuracy, the public fit restores it."""
    from blindtrain.attacks import visible_theft

    messages, knowledge, truth = serve_slalom(tmp_path, train_steps=300, hidden=(128, 64), activation="sigmoid")
    fitted = scored_accuracy(recover(messages, knowledge).model_state, knowledge)
    monkeypatch.setattr(visible_theft, "BOUND", 1e-9)  # no exponent correction: the init prior alone
    prior_only = scored_accuracy(recover(messages, knowledge).model_state, knowledge)
    assert fitted >= truth.accuracy - 0.05 and fitted >= prior_only + 0.1


# -- masked operands and random messages ------------------------------------------------------------------

def _correlation(recovered: np.ndarray, true: np.ndarray) -> float:
    return float(np.corrcoef(recovered.ravel(), true.ravel())[0, 1])


def test_uniform_random_messages_score_chance(otp_run):
    views, knowledge, truth, _ = otp_run
    recovery = recover(uniform_like(views["main"]), knowledge)
    assert recovery.model_state is None  # no message decodes as fixed-point weights
    assert not recovery.gradients and not recovery.label_counts and not recovery.labels and not recovery.inputs
    assert any("masked frames pass the uniformity test" in note for note in recovery.notes)


def test_direct_read_of_masked_frames_is_at_chance(otp_run):
    views, knowledge, truth, recovery = otp_run
    check = uniformity(views["main"], knowledge)
    assert check.structured == [] and check.rejected_at_0_001 < 0.05
    assert 0.9 < check.constant_feature_spread < 1.1  # always-zero pixels spread like uniform elements
    read = direct_read(views["main"], knowledge)
    assert sorted(read.inputs) == list(range(12)) + [12]  # 12: the serving batch (not scored)
    correlations = [_correlation(read.inputs[step], truth.inputs[step]) for step in range(12)]
    assert max(abs(c) for c in correlations) < 0.05
    assert not recovery.inputs


def test_unmasked_frames_are_caught_and_read(otp_run):
    """A broken pad (zero) leaves the frame structured: the attack notices and reads it directly."""
    views, knowledge, truth, _ = otp_run
    broken = []
    for m in views["main"]:
        if m.kind == "masked" and m.layer == "1" and m.step < 12:
            plain = np.rint(truth.inputs[m.step].reshape(len(m.array), -1) * 2.0**12)
            m = replace(m, array=np.mod(plain.astype(np.int64), np.int64(m.modulus)).astype(m.array.dtype))  # exact: p > 2^53
        broken.append(m)
    assert len(uniformity(broken, knowledge).structured) == 12
    recovery = recover(broken, knowledge, invert=False)
    assert sorted(recovery.inputs) == list(range(12))
    assert min(_correlation(recovery.inputs[s], truth.inputs[s]) for s in range(12)) > 0.99


# -- gradient inversion --------------------------------------------------------------------------------

def test_one_row_batches_are_inverted_to_the_training_input(tmp_path, monkeypatch):
    from blindtrain.attacks import visible_inversion

    monkeypatch.setattr(visible_inversion, "SECONDS_PER_STEP", 1.0)
    views, knowledge, truth = train_otp(tmp_path, steps=2, batch_size=1)
    recovery = recover(views["main"], knowledge)
    assert sorted(recovery.inputs) == [0, 1]
    for step in (0, 1):
        assert recovery.labels[step].tolist() == truth.labels[step].tolist() and recovery.labels_resolved
        assert _correlation(recovery.inputs[step], truth.inputs[step]) > 0.99
    assert any("gradient inversion" in note for note in recovery.notes)
