"""Labels from the last layer's weight gradient (the batch's label histogram).

For the classifier ``z = W·h + b`` the weight gradient of a batch of ``B`` is
``dW = (1/B)·Σ_i dz_iᵀ h_i`` where ``dz_i = ∂loss_i/∂z_i`` (cross-entropy: ``softmax(z_i) − onehot(y_i)``)
and ``h_i ≥ 0`` after a ReLU.  The row of the true class is pushed negative, the others positive,
in proportion to how many samples of each class the batch holds.

Estimator (in the spirit of Wainakh et al.'s LLG and Geng et al.'s count estimate, with the known
weights): on the public split, through the model at step ``t`` (the visible ``W_t``; biases estimated),
compute the class-conditional mean of the per-sample gradient ``M_k = E[dz_iᵀ h_i | y_i = k]``; then
``dW ≈ (1/B)·Σ_k n_k·M_k`` is linear in the counts ``n``.  Non-negative least squares on all
``out×in`` entries gives ``n``; it is rescaled to sum to ``B`` (known: the rows of the step's masked
messages) and rounded by largest remainders.  Per-row labels follow only when the histogram pins
them down (one class holds the whole batch, e.g. ``B = 1``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls

from .recovery import Knowledge

#: public samples used to calibrate M_k per step
CALIBRATION_SAMPLES = 512


def _per_sample_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if name == "mse":
        target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
        return (torch.softmax(logits, -1) - target).square().sum()
    return F.cross_entropy(logits, labels, reduction="sum")


def class_gradients(model: torch.nn.Module, classifier: str, knowledge: Knowledge) -> np.ndarray:
    """``M`` of shape (classes, out, in): the mean per-sample classifier weight gradient per true class."""
    module = model.get_submodule(classifier)
    captured = {}
    handle = module.register_forward_hook(lambda m, inputs, output: captured.update(h=inputs[0], z=output))
    x = torch.from_numpy(np.asarray(knowledge.public_x[:CALIBRATION_SAMPLES], dtype=np.float32))
    y = torch.from_numpy(np.asarray(knowledge.public_y[:CALIBRATION_SAMPLES], dtype=np.int64))
    try:
        with torch.enable_grad():
            model(x)
            z = captured["z"]
            dz, = torch.autograd.grad(_per_sample_loss(knowledge.hyper.get("loss", "ce"), z, y), z)
    finally:
        handle.remove()
    h = captured["h"].detach().reshape(len(y), -1)
    classes = knowledge.num_classes
    out = np.zeros((classes, dz.shape[1], h.shape[1]))
    for k in range(classes):
        rows = y == k
        if rows.any():
            out[k] = torch.einsum("bo,bi->oi", dz[rows], h[rows]).div(int(rows.sum())).double().numpy()
    return out


def counts_from_gradient(grad: np.ndarray, per_class: np.ndarray, batch: int) -> np.ndarray:
    """Integer label counts (summing to ``batch``) explaining ``grad ≈ (1/B)·Σ_k n_k·per_class[k]``."""
    design = per_class.reshape(per_class.shape[0], -1).T
    solution, _ = nnls(design, grad.ravel() * batch)
    total = solution.sum()
    if total <= 0:
        return np.zeros(per_class.shape[0], dtype=np.int64)
    scaled = solution * batch / total
    counts = np.floor(scaled).astype(np.int64)
    remainder = batch - int(counts.sum())
    if remainder > 0:
        counts[np.argsort(-(scaled - counts))[:remainder]] += 1
    return counts
