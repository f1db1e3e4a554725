"""Attacks on the field protocols whose worker sees the weights (``otp``, ``slalom``).

The victim runs through the public Python API with a transcript; the ground truth (true batches,
true weight gradients, final weights) is recorded here by the test, never handed to the attack.
The attacker gets only :class:`Message` objects and :class:`Knowledge` (architecture,
hyper-parameters, a public split: the first half of digits' test split; scoring uses the other half).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blindtrain import Session
from blindtrain import data as datasets
from blindtrain import models
from blindtrain.attacks.recovery import Knowledge, Message
from blindtrain.attacks.visible import recover
from blindtrain.attacks.visible_masked import direct_read, uniformity
from blindtrain.transcript import load as load_transcript

PUBLIC = 180  # digits' test split: the first 180 samples are public, the remaining 180 score


@dataclass
class Truth:
    """What the trusted side knows (scoring only)."""

    grads: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    inputs: dict[int, np.ndarray] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  #: step -> state before the step
    accuracy: float = 0.0


def _messages(path, role: str) -> list[Message]:
    meta, arrays = load_transcript(path)
    return [Message(index=i, key=m["key"], step=m["step"], layer=m["layer"], op=m["op"], operand=m["operand"],
                    kind=m["kind"], dtype=m["dtype"], modulus=m["modulus"], worker=m.get("worker", f"{role}0"),
                    role=role, array=arrays[m["key"]]) for i, m in enumerate(meta)]


def _knowledge(protocol: str, hyper: dict, hidden=(32,)) -> Knowledge:
    digits = datasets.load("digits", seed=0)
    return Knowledge(protocol=protocol, model_spec={"model": "mlp", "hidden": list(hidden), "activation": "relu",
                                                    "dataset": "digits"},
                     input_shape=tuple(digits.input_shape), num_classes=10, hyper=hyper,
                     public_x=digits.x_test[:PUBLIC].numpy(), public_y=digits.y_test[:PUBLIC].numpy(),
                     public_split=f"digits test split, first {PUBLIC} of 360 samples")


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def train_otp(tmp_path, *, steps=20, batch_size=64, hidden=(32,), lr=0.05, momentum=0.9, weight_decay=0.0,
              optimizer="sgd", nesterov=False, **options):
    """A victim trained under otp; returns ({role: messages}, knowledge, truth)."""
    digits = datasets.load("digits", seed=0)
    torch.manual_seed(0)
    model = models.build("mlp", digits.input_shape, 10, hidden=hidden)
    opt = (torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay) if optimizer == "adam" else
           torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov))
    session = Session(protocol="otp", device="cpu", seed=0, transcript=True, **options)
    wrapped, opt = session.prepare(model, opt)
    truth = Truth()
    step = 0
    for x, y in digits.batches(batch_size=batch_size, epoch=0, seed=0):
        if step == steps:
            break
        truth.states[step] = copy.deepcopy(model.state_dict())
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y).backward()
        truth.grads[step] = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
        truth.labels[step], truth.inputs[step] = y.numpy().copy(), x.numpy().copy()
        opt.step()
        step += 1
    wrapped.eval()
    score_x, score_y = digits.x_test[PUBLIC:], digits.y_test[PUBLIC:]
    with torch.no_grad():  # the victim serves a few predictions: the worker sees W_T too
        wrapped(score_x[:32])
    truth.state = copy.deepcopy(session.plaintext_model().state_dict())
    truth.accuracy = _accuracy(session.plaintext_model(), score_x, score_y)
    path = tmp_path / "otp.npz"
    written = session.save_transcripts(path)
    session.close()
    views = {"main": _messages(path, "main")}
    for extra in written[1:]:
        views[extra.stem.split(".")[-1]] = _messages(extra, extra.stem.split(".")[-1])
    hyper = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "optimizer": optimizer, "nesterov": nesterov,
             "batch_size": batch_size, "loss": "ce"}
    return views, _knowledge("otp", hyper, hidden), truth


def scored_accuracy(state: dict, knowledge: Knowledge) -> float:
    digits = datasets.load("digits", seed=0)
    model = knowledge.build_model()
    model.load_state_dict(state)
    return _accuracy(model.eval(), digits.x_test[PUBLIC:], digits.y_test[PUBLIC:])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def serve_slalom(tmp_path, *, train_steps=60, hidden=(32,), batches=2, **options):
    """A victim model trained in plaintext, then served under slalom; returns (messages, knowledge, truth)."""
    digits = datasets.load("digits", seed=0)
    torch.manual_seed(0)
    model = models.build("mlp", digits.input_shape, 10, hidden=hidden)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    plain = [batch for epoch in range(-(-train_steps // 23)) for batch in digits.batches(batch_size=64, epoch=epoch,
                                                                                     seed=0)]
    for x, y in plain[:train_steps]:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    truth = Truth(state=copy.deepcopy(model.state_dict()))
    truth.accuracy = _accuracy(model.eval(), digits.x_test[PUBLIC:], digits.y_test[PUBLIC:])
    session = Session(protocol="slalom", device="cpu", seed=0, transcript=True, **{"precompute": 2, **options})
    served, _ = session.prepare(model, None)
    with torch.no_grad():
        for index in range(batches):
            served(digits.x_train[index * 64:(index + 1) * 64])
    path = tmp_path / "slalom.npz"
    session.save_transcripts(path)
    session.close()
    return _messages(path, "main"), _knowledge("slalom", {"batch_size": 64}, hidden), truth


def agreement(state: dict, reference: dict, knowledge: Knowledge) -> float:
    digits = datasets.load("digits", seed=0)
    a, b = knowledge.build_model(), knowledge.build_model()
    a.load_state_dict(state)
    b.load_state_dict(reference)
    with torch.no_grad():
        x = digits.x_test[PUBLIC:]
        return float((a.eval()(x).argmax(-1) == b.eval()(x).argmax(-1)).float().mean())


def misassigned(counts: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the batch's labels a histogram puts in the wrong class."""
    return float(np.abs(counts - np.bincount(labels, minlength=len(counts))).sum() / 2 / len(labels))


def uniform_like(messages: list[Message], seed: int = 0) -> list[Message]:
    """The same meta, every array replaced by uniform field elements."""
    rng = np.random.default_rng(seed)
    return [replace(m, array=rng.integers(0, m.modulus, size=m.array.shape).astype(m.array.dtype))
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
            bound = (1 + momentum) * 2.0 ** -_exponent(recovery, name) / lr
            assert np.abs(grad - truth.grads[step][name]).max() <= bound
        assert cosine(grads["3.weight"], truth.grads[step]["3.weight"]) > 0.99


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
            m = replace(m, array=np.mod(plain, m.modulus).astype(m.array.dtype))
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
