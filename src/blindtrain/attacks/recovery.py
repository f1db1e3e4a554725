"""The contract between attacks and the scorer: what an attacker sees and what it claims to recover.

An attack is a function ``attack(messages, knowledge) -> Recovery``.  It reads nothing else: no
ground truth, no key, no file but the transcript(s) it was handed.  The scorer compares a
:class:`Recovery` with the ground truth the trusted side recorded.

**Row frame.**  Per training step, recovered labels and inputs are given row by row in the order of
the step's *frame message*: the first message of that step with ``op == "forward"``, ``operand == "A"``
on the model's first offloaded layer, as the main role (worker index 0) received it.  Protocols that
permute batch rows (tempo's π_b) record, in the ground truth only, which true batch row each frame row
is; protocols that do not permute have the identity order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Message:
    """One tensor a worker role received (a transcript entry, DESIGN.md's ``meta`` plus its array)."""

    index: int            #: position in the role's transcript
    key: str              #: ``m000000`` ...
    step: int
    layer: str
    op: str               #: ``forward``, ``grad_input``, ``grad_weight``, ``encrypt``, ``fetch``, ``sgd`` ...
    operand: str          #: ``A`` or ``B`` (or a protocol's own name for an extra operand)
    kind: str             #: ``masked``, ``public``, ``obfuscated``, ``pad``, ``share`` or ``clear``
    dtype: str
    modulus: int | None
    worker: str           #: ``main0``, ``main1``, ``mask0``, ``s0`` ...
    role: str             #: the role whose transcript this came from (``main``, ``mask``, ``s0`` ...)
    array: np.ndarray


@dataclass(frozen=True)
class Knowledge:
    """What the attacker knows besides the transcript: the architecture, the hyper-parameters and a
    public split of the same data distribution (never the training samples themselves)."""

    protocol: str
    model_spec: dict               #: ``{model, hidden, activation, dataset}`` as the run was configured
    input_shape: tuple[int, ...]
    num_classes: int
    hyper: dict                    #: lr, momentum, weight_decay, optimizer, batch_size, loss, protocol options
    public_x: np.ndarray           #: (N, *input_shape) float32, the public split's inputs
    public_y: np.ndarray           #: (N,) int64, its labels
    public_split: str              #: which split is public and how big it is, in words

    def build_model(self) -> torch.nn.Module:
        """A fresh model of the victim's architecture (random weights): layer names and shapes."""
        from .. import models

        hidden = tuple(self.model_spec["hidden"]) if self.model_spec.get("hidden") else None
        return models.build(self.model_spec["model"], self.input_shape, self.num_classes, hidden=hidden,
                            activation=self.model_spec.get("activation", "relu"))


@dataclass
class Recovery:
    """What one attack claims.  Every field is optional: an attack fills what it targets.

    Attributes:
        attack: the attack's name.
        labels: step -> (b,) int64 labels in the step's row frame; ``-1`` where no guess is made.
        labels_resolved: ``True`` if ``labels`` are true class indices; ``False`` if they are class
            indices up to an unknown permutation of the classes (scored up to permutation only).
        label_counts: step -> (classes,) estimated number of samples of each class in the batch
            (for views that leak a batch's label histogram but not per-row labels).
        inputs: step -> (b, *input_shape) float32 reconstructions in the row frame; NaN rows: no guess.
        model_state: the victim's plaintext ``state_dict`` as reconstructed at the end of the view
            (keys and shapes of :meth:`Knowledge.build_model`), or ``None``.
        gradients: step -> {parameter name: recovered gradient of that step}.
        notes: how the attack worked and what it assumed, in words, for the report.
    """

    attack: str
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    labels_resolved: bool = False
    label_counts: dict[int, np.ndarray] = field(default_factory=dict)
    inputs: dict[int, np.ndarray] = field(default_factory=dict)
    model_state: dict[str, torch.Tensor] | None = None
    gradients: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def frame_messages(messages: Sequence[Message], first_layer: str) -> dict[int, Message]:
    """step -> the step's frame message (see the module docstring)."""
    frames: dict[int, Message] = {}
    for message in messages:
        if (message.op == "forward" and message.operand == "A" and message.layer == first_layer
                and message.worker.endswith("0") and message.step not in frames):
            frames[message.step] = message
    return frames
