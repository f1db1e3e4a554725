"""Measure the visible-weights attacks on victims run here with their ground truth (dev and tests).

    python -m blindtrain.attacks.visible_measure --protocol otp --steps 30 --batch-size 64 --hidden 128,64
    python -m blindtrain.attacks.visible_measure --protocol otp --unmask mask-worker --role mask
    python -m blindtrain.attacks.visible_measure --protocol slalom --train-steps 300

The victim trains (``otp``) or serves (``slalom``) on digits through the public Python API with a
transcript, exactly as ``blindtrain train`` does; the ground truth (each step's true batch, labels,
weight gradients, the final weights) is recorded on the trusted side by this harness and used only to
score.  The attacker gets the :class:`Message` list of one role and a :class:`Knowledge` whose public
split is the first half of digits' test split; accuracies are scored on the other half.

Chance levels printed beside each figure: a model trained on the public split only; the public class
prior as every batch's label histogram; public images of the recovered classes as reconstructions.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import data as datasets
from .. import models
from ..session import Session
from ..transcript import load as load_transcript
from .recovery import Knowledge, Message, Recovery

PUBLIC = 180  #: digits' test split: the first 180 samples are public, the remaining 180 score


@dataclass
class Truth:
    """What the trusted side knows (scoring only; never handed to an attack)."""

    grads: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    inputs: dict[int, np.ndarray] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  #: step -> state before the step
    accuracy: float = 0.0


def messages_of(path, role: str) -> list[Message]:
    """A transcript file as the attack's :class:`Message` list."""
    meta, arrays = load_transcript(path)
    return [Message(index=i, key=m["key"], step=m["step"], layer=m["layer"], op=m["op"], operand=m["operand"],
                    kind=m["kind"], dtype=m["dtype"], modulus=m["modulus"], worker=m.get("worker", f"{role}0"),
                    role=role, array=arrays[m["key"]]) for i, m in enumerate(meta)]


def knowledge_for(protocol: str, hyper: dict, *, model: str = "mlp", hidden=(32,),
                  activation: str = "relu") -> Knowledge:
    digits = datasets.load("digits", seed=0)
    return Knowledge(protocol=protocol, model_spec={"model": model, "hidden": list(hidden) if hidden else None,
                                                    "activation": activation, "dataset": "digits"},
                     input_shape=tuple(digits.input_shape), num_classes=10, hyper=hyper,
                     public_x=digits.x_test[:PUBLIC].numpy(), public_y=digits.y_test[:PUBLIC].numpy(),
                     public_split=f"digits test split, first {PUBLIC} of 360 samples")


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def _build(model: str, hidden, activation: str) -> torch.nn.Module:
    digits_shape, classes = (1, 8, 8), 10
    return models.build(model, digits_shape, classes, hidden=tuple(hidden) if hidden else None, activation=activation)


def train_otp(directory, *, steps=20, batch_size=64, model="mlp", hidden=(32,), activation="relu", lr=0.05,
              momentum=0.9, weight_decay=0.0, optimizer="sgd", nesterov=False, **options):
    """A victim trained under otp; returns ``({role: messages}, knowledge, truth)``."""
    digits = datasets.load("digits", seed=0)
    torch.manual_seed(0)
    net = _build(model, hidden, activation)
    opt = (torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay) if optimizer == "adam" else
           torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))
    session = Session(protocol="otp", device="cpu", seed=0, transcript=True, **options)
    wrapped, opt = session.prepare(net, opt)
    truth = Truth()
    batches = [b for epoch in range(-(-steps * batch_size // len(digits.y_train)) + 1)
               for b in digits.batches(batch_size=batch_size, epoch=epoch, seed=0)]
    for step, (x, y) in enumerate(batches[:steps]):
        truth.states[step] = copy.deepcopy(net.state_dict())
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y).backward()
        truth.grads[step] = {n: p.grad.detach().numpy().copy() for n, p in net.named_parameters()}
        truth.labels[step], truth.inputs[step] = y.numpy().copy(), x.numpy().copy()
        opt.step()
    wrapped.eval()
    score_x, score_y = digits.x_test[PUBLIC:], digits.y_test[PUBLIC:]
    with torch.no_grad():  # the victim serves a few predictions: the worker sees W_T too
        wrapped(score_x[:32])
    truth.state = copy.deepcopy(session.plaintext_model().state_dict())
    truth.accuracy = _accuracy(session.plaintext_model(), score_x, score_y)
    path = Path(directory) / "otp.npz"
    written = session.save_transcripts(path)
    session.close()
    views = {"main": messages_of(path, "main")}
    for extra in written[1:]:
        role = extra.stem.split(".")[-1]
        views[role] = messages_of(extra, role)
    hyper = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "optimizer": optimizer,
             "nesterov": nesterov, "batch_size": batch_size, "loss": "ce"}
    return views, knowledge_for("otp", hyper, model=model, hidden=hidden, activation=activation), truth


def serve_slalom(directory, *, train_steps=60, model="mlp", hidden=(32,), activation="relu", batches=2, **options):
    """A victim trained in plaintext, then served under slalom; returns ``(messages, knowledge, truth)``."""
    digits = datasets.load("digits", seed=0)
    torch.manual_seed(0)
    net = _build(model, hidden, activation)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    plain = [b for epoch in range(-(-train_steps * 64 // len(digits.y_train)) + 1)
             for b in digits.batches(batch_size=64, epoch=epoch, seed=0)]
    for x, y in plain[:train_steps]:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    truth = Truth(state=copy.deepcopy(net.state_dict()))
    truth.accuracy = _accuracy(net.eval(), digits.x_test[PUBLIC:], digits.y_test[PUBLIC:])
    session = Session(protocol="slalom", device="cpu", seed=0, transcript=True, **{"precompute": 2, **options})
    served, _ = session.prepare(net, None)
    with torch.no_grad():
        for index in range(batches):
            served(digits.x_train[index * 64:(index + 1) * 64])
    path = Path(directory) / "slalom.npz"
    session.save_transcripts(path)
    session.close()
    knowledge = knowledge_for("slalom", {"batch_size": 64}, model=model, hidden=hidden, activation=activation)
    return messages_of(path, "main"), knowledge, truth


# -- scores ------------------------------------------------------------------------------------------------

def scored_accuracy(state: dict, knowledge: Knowledge) -> float:
    """Test accuracy (the non-public half of digits' test split) of a state_dict."""
    digits = datasets.load("digits", seed=0)
    model = knowledge.build_model()
    model.load_state_dict(state)
    return _accuracy(model.eval(), digits.x_test[PUBLIC:], digits.y_test[PUBLIC:])


def agreement(state: dict, reference: dict, knowledge: Knowledge) -> float:
    """Fraction of scoring inputs on which two state_dicts predict the same class."""
    digits = datasets.load("digits", seed=0)
    a, b = knowledge.build_model(), knowledge.build_model()
    a.load_state_dict(state)
    b.load_state_dict(reference)
    with torch.no_grad():
        x = digits.x_test[PUBLIC:]
        return float((a.eval()(x).argmax(-1) == b.eval()(x).argmax(-1)).float().mean())


def public_only_accuracy(knowledge: Knowledge, *, iterations: int = 300) -> float:
    """Chance for model theft: the architecture trained on the public split alone."""
    torch.manual_seed(0)
    model = knowledge.build_model()
    x, y = torch.from_numpy(knowledge.public_x), torch.from_numpy(knowledge.public_y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(iterations):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return scored_accuracy(model.state_dict(), knowledge)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def misassigned(counts: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the batch's labels a histogram puts in the wrong class."""
    return float(np.abs(counts - np.bincount(labels, minlength=len(counts))).sum() / 2 / len(labels))


def matched_inputs(recovered: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Rows matched by best assignment (least squared error): median PSNR, median correlation, share > 0.95."""
    from scipy.optimize import linear_sum_assignment

    a, b = recovered.reshape(len(recovered), -1), true.reshape(len(true), -1)
    cost = ((a[:, None] - b[None]) ** 2).mean(-1)
    rows, cols = linear_sum_assignment(cost)
    peak = float(b.max() - b.min())
    psnr = 10 * np.log10(peak ** 2 / np.maximum(cost[rows, cols], 1e-12))
    corr = np.array([np.corrcoef(a[i], b[j])[0, 1] for i, j in zip(rows, cols)])
    return {"psnr_db": float(np.median(psnr)), "correlation": float(np.median(corr)),
            "rows_corr_above_0.95": float(np.mean(corr > 0.95))}


def report(recovery: Recovery, truth: Truth, knowledge: Knowledge) -> dict:
    """Every figure the view supports, beside its chance level."""
    out: dict = {"victim_accuracy": truth.accuracy}
    if recovery.model_state is not None:
        out["stolen_accuracy"] = scored_accuracy(recovery.model_state, knowledge)
        out["agreement_with_victim"] = agreement(recovery.model_state, truth.state, knowledge)
    out["public_only_accuracy (chance)"] = public_only_accuracy(knowledge)
    per_layer: dict[str, list[float]] = {}
    for step, grads in recovery.gradients.items():
        for name, grad in grads.items():
            per_layer.setdefault(name, []).append(cosine(grad, truth.grads[step][name]))
    out["gradient_cosine (mean, min)"] = {k: (round(float(np.mean(v)), 4), round(float(np.min(v)), 4))
                                          for k, v in per_layer.items()}
    if recovery.label_counts:
        prior = np.bincount(knowledge.public_y, minlength=knowledge.num_classes) / len(knowledge.public_y)
        steps = sorted(recovery.label_counts)
        out["label_hist_misassigned"] = float(np.mean([misassigned(recovery.label_counts[s], truth.labels[s])
                                                       for s in steps]))
        exact = sum(bool((recovery.label_counts[s] == np.bincount(truth.labels[s],
                                                                   minlength=knowledge.num_classes)).all())
                    for s in steps)
        out["label_hist_exact_steps"] = f"{exact}/{len(steps)}"
        out["label_hist_misassigned (chance: public prior)"] = float(np.mean(
            [misassigned(np.round(prior * len(truth.labels[s])), truth.labels[s]) for s in steps]))
    return out


def invert_and_score(recovery: Recovery, messages, knowledge: Knowledge, truth: Truth, *, steps: int = 2,
                     seconds: float = 3.0) -> list[dict]:
    """Gradient inversion on the first ``steps`` steps, rows matched by best assignment, beside chance."""
    from .visible import model_at
    from .visible_inversion import invert_batch, labels_from_counts, public_class_means
    from .visible_weights import read_weights

    view = read_weights(messages, knowledge)
    stolen = knowledge.build_model()
    stolen.load_state_dict(recovery.model_state)
    rng = np.random.default_rng(0)
    rows = []
    for step in sorted(recovery.gradients)[:steps]:
        labels = labels_from_counts(recovery.label_counts[step])
        start = time.perf_counter()
        x, achieved, _ = invert_batch(model_at(stolen, view, step), recovery.gradients[step], labels,
                                      input_shape=tuple(knowledge.input_shape), seconds=seconds,
                                      class_means=public_class_means(knowledge))
        picks = [rng.choice(np.flatnonzero(knowledge.public_y == k)) for k in labels]
        means = public_class_means(knowledge)[labels]
        rows.append({"step": step, "batch": len(labels), "seconds": round(time.perf_counter() - start, 2),
                     "gradient_cosine": round(achieved, 4), **matched_inputs(x, truth.inputs[step]),
                     "chance (public images of the same classes)": matched_inputs(knowledge.public_x[picks],
                                                                                 truth.inputs[step]),
                     "chance (public class means)": matched_inputs(means, truth.inputs[step])})
    return rows


def main(argv=None) -> None:
    from .visible import recover

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=("otp", "slalom"), default="otp")
    parser.add_argument("--role", default="main")
    parser.add_argument("--unmask", default="enclave")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--hidden", default="128,64")
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=300, help="slalom: plaintext training before serving")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--invert-steps", type=int, default=2)
    parser.add_argument("--invert-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    hidden = tuple(int(w) for w in args.hidden.split(",")) if args.hidden else None
    with tempfile.TemporaryDirectory() as directory:
        if args.protocol == "otp":
            views, knowledge, truth = train_otp(directory, steps=args.steps, batch_size=args.batch_size,
                                                model=args.model, hidden=hidden, activation=args.activation,
                                                lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                                optimizer=args.optimizer, unmask=args.unmask)
            messages = views[args.role]
        else:
            messages, knowledge, truth = serve_slalom(directory, train_steps=args.train_steps, model=args.model,
                                                      hidden=hidden, activation=args.activation)
    start = time.perf_counter()
    recovery = recover(messages, knowledge, invert=False)
    print(f"attack time {time.perf_counter() - start:.2f} s ({len(messages)} messages, role {args.role})")
    for note in recovery.notes:
        print(" -", note)
    for key, value in report(recovery, truth, knowledge).items():
        print(f"{key}: {value}")
    if recovery.gradients and recovery.label_counts and args.invert_steps:
        for row in invert_and_score(recovery, messages, knowledge, truth, steps=args.invert_steps,
                                    seconds=args.invert_seconds):
            print("inversion:", row)


if __name__ == "__main__":
    main()
