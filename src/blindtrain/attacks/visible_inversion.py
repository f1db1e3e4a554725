"""Input reconstruction by gradient inversion where the weights are visible (``otp``).

Given the model at step ``t`` (the visible ``W_t``; biases estimated, refined as free variables), the
recovered weight gradients ``G_l`` of that step and the estimated label histogram, find a batch ``X̂``
whose gradients match (Geiping et al., "Inverting Gradients", NeurIPS 2020: cosine distance per layer)::

    min_X̂  Σ_l (1 − cos(∇_l, G_l)) + ‖∇_l − G_l‖² / ‖G_l‖²,    ∇_l = ∇_{W_l} loss(X̂, ŷ)

(the recovered gradients keep their true magnitude — known learning rate and scale — so the distance
term pins the inputs' scale, which the cosine alone leaves loose).

Labels ``ŷ`` are the histogram's classes in an arbitrary row order; each row starts from the public
split's mean input of its class.  The search is bounded by :data:`MAX_ITERATIONS` Adam steps and
:data:`SECONDS_PER_STEP` of wall clock.  (Reading single inputs off the first layer's gradient rows,
which ReLU sparsity makes rank one, with a per-row sign/scale search, was tried and measured no
better than this start at batches 2 and 4 on digits; it was removed.)

The masked frames hide which row is which, so reconstructions come **unordered**: they are reported
in :attr:`Recovery.inputs` only where the row frame is trivial (a batch of one row); otherwise
:func:`invert_batch` returns them for a scorer that matches rows by best assignment.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .recovery import Knowledge, Recovery
from .visible_weights import WeightView

#: wall-clock budget of one step's inversion (seconds) and its iteration cap
SECONDS_PER_STEP = 3.0
MAX_ITERATIONS = 300
#: larger batches are not attempted inside :func:`invert_steps`: on digits (2^24 field) the median row
#: correlation is 0.92 at batch 8 and 0.86 at batch 64 against 0.87 / 0.85 for the public class means
#: (``python -m blindtrain.attacks.visible_measure --batch-size 8``): near the class-prior chance level
MAX_BATCH = 4


def _loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(torch.softmax(logits, -1), F.one_hot(labels, logits.shape[-1]).to(logits.dtype))
    return F.cross_entropy(logits, labels)


def invert_batch(model: torch.nn.Module, observed: dict[str, np.ndarray], labels: np.ndarray, *,
                 input_shape: tuple[int, ...], loss: str = "ce", seconds: float = SECONDS_PER_STEP,
                 iterations: int = MAX_ITERATIONS, seed: int = 0,
                 class_means: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """Reconstruct a batch (rows in arbitrary order) whose labels are the multiset ``labels``.

    Rows start from ``class_means`` (the public split's mean image of each row's class: the attack
    starts at the class-prior guess), or else from random points of the first gradient's row space.

    Returns ``(X̂ of shape (B, *input_shape), achieved mean cosine between its gradients and observed,
    the label of each row of X̂)``.
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    model = model.train()
    params = dict(model.named_parameters())
    matched = [name for name in observed if name in params]
    targets = [torch.from_numpy(np.asarray(observed[name], dtype=np.float32)) for name in matched]
    weights = [params[name] for name in matched]
    biases = [p for name, p in params.items() if name not in observed]
    for p in weights:
        p.requires_grad_(True)
    batch = len(labels)
    width = int(np.prod(input_shape))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    first = targets[0].reshape(targets[0].shape[0], -1) if targets else None
    in_row_space = first is not None and first.shape[1] == width and batch < width
    if class_means is not None:  # the public split's mean image of each row's class
        means = torch.from_numpy(np.asarray(class_means, dtype=np.float32).reshape(len(class_means), -1))
        x = means[y]
    elif in_row_space:  # the batch lies in the span of G_1's top-B right singular vectors
        basis = torch.linalg.svd(first.double(), full_matrices=False)[2][:batch].float()
        x = (torch.randn(batch, batch, generator=generator) * np.sqrt(width / batch)) @ basis
    else:
        x = torch.randn(batch, width, generator=generator)

    def _objective(candidate: torch.Tensor, labels: torch.Tensor, graph: bool = False):
        grads = torch.autograd.grad(_loss(loss, model(candidate.reshape(batch, *input_shape)), labels), weights,
                                    create_graph=graph)
        cosines = torch.stack([F.cosine_similarity(g.reshape(1, -1), t.reshape(1, -1)).squeeze()
                               for g, t in zip(grads, targets)])
        distances = torch.stack([(g - t).square().sum() / t.square().sum().clamp_min(1e-30)
                                 for g, t in zip(grads, targets)])
        return len(targets) - cosines.sum() + distances.sum(), cosines

    x = x.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x, *biases], lr=0.05)
    achieved = 0.0
    for _ in range(iterations):
        optimizer.zero_grad()
        objective, cosines = _objective(x, y, True)
        objective.backward()
        optimizer.step()
        achieved = float(cosines.detach().mean())
        if time.perf_counter() - start > seconds:
            break
    return x.detach().reshape(batch, *input_shape).numpy(), achieved, y.numpy()


def public_class_means(knowledge: Knowledge) -> np.ndarray:
    """(classes, *input_shape): the public split's mean input of each class (zeros for absent classes)."""
    x = np.asarray(knowledge.public_x, dtype=np.float32)
    out = np.zeros((knowledge.num_classes, *x.shape[1:]), dtype=np.float32)
    for k in range(knowledge.num_classes):
        rows = knowledge.public_y == k
        if rows.any():
            out[k] = x[rows].mean(0)
    return out


def labels_from_counts(counts: np.ndarray) -> np.ndarray:
    """One label per row, grouped by class (the rows' true order is unknown)."""
    return np.repeat(np.arange(len(counts)), counts).astype(np.int64)


def invert_steps(recovery: Recovery, view: WeightView, model, knowledge: Knowledge, frames: dict, *,
                 steps: int) -> dict[int, np.ndarray]:
    """Invert the ``steps`` smallest batches (at most :data:`MAX_BATCH` rows) with gradients and a label histogram.

    Fills :attr:`Recovery.inputs` for one-row batches; returns every reconstruction (unordered rows).
    """
    from .visible import model_at

    candidates = sorted((len(labels_from_counts(c)), step) for step, c in recovery.label_counts.items()
                        if step in recovery.gradients and int(c.sum()) <= MAX_BATCH)
    if not candidates:
        recovery.notes.append(f"gradient inversion not attempted: no batch of at most {MAX_BATCH} rows (larger batches "
                              f"measured near the class-prior chance level on digits)")
    out: dict[int, np.ndarray] = {}
    summary = []
    for batch, step in candidates[:steps]:
        labels = labels_from_counts(recovery.label_counts[step])
        x, achieved, _ = invert_batch(model_at(model, view, step), recovery.gradients[step], labels,
                                      input_shape=tuple(knowledge.input_shape),
                                      loss=knowledge.hyper.get("loss", "ce"), seconds=SECONDS_PER_STEP,
                                      class_means=public_class_means(knowledge))
        out[step] = x
        summary.append(f"step {step} (batch {batch}): gradient cosine {achieved:.3f}")
        if batch == 1:
            recovery.inputs[step] = x.astype(np.float32)
    if summary:
        recovery.notes.append(
            "gradient inversion (cosine matching of the recovered weight gradients, labels from the histogram, "
            f"≤ {SECONDS_PER_STEP:g} s per step) on the smallest batches: " + "; ".join(summary)
            + ". Rows come out in arbitrary order (the pads hide the frame): reported in inputs only for "
              "one-row batches; visible_inversion.invert_batch gives them for best-assignment scoring")
    return out
