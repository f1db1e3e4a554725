"""Test-only harness: train a tempo victim through the Python API, record the worker's transcript and the
ground truth needed to score an attack (true batch rows in the frame order, the final plaintext model).

The keys are read here (the first layer's batch permutation, to know which true row each frame row is);
this module is scoring code, never imported by an attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from blindtrain import data as datasets
from blindtrain import models, transcript
from blindtrain.attacks.recovery import Knowledge, Message
from blindtrain.session import Session
from blindtrain.train import loss_fn


@dataclass
class Victim:
    messages: list[Message]
    knowledge: Knowledge
    x_frame: dict[int, np.ndarray] = field(default_factory=dict)   # step -> true inputs in the frame order
    y_frame: dict[int, np.ndarray] = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None


def run_victim(tmp_path, *, steps=30, model="mlp", hidden=None, activation="relu", optimizer="sgd",
               lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=64, seed=0, evaluate=True,
               **options) -> Victim:
    dataset = datasets.load("digits", seed=seed)
    torch.manual_seed(seed)
    net = models.build(model, dataset.input_shape, dataset.num_classes, hidden=hidden, activation=activation)
    opt = (torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay) if optimizer == "adam" else
           torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay))
    session = Session(protocol="tempo", device="cpu", transcript=True, **options)
    wrapped, opt = session.prepare(net, opt)
    protocol = session.protocol
    first = next(iter(protocol.layers))
    x_frame, y_frame = {}, {}
    per_epoch = dataset.steps_per_epoch(batch_size)
    step = 0
    wrapped.train()
    while step < steps:
        for x, y in dataset.batches(batch_size=batch_size, epoch=step // per_epoch, seed=seed):
            if step >= steps:
                break
            opt.zero_grad(set_to_none=True)
            loss = loss_fn("ce", wrapped(x), y)
            pb = protocol.layers[first].batch[0]
            x_frame[step], y_frame[step] = x[pb].numpy(), y[pb].numpy()
            loss.backward()
            opt.step()
            step += 1
    if evaluate:
        wrapped.eval()
        with torch.no_grad():
            for start in range(0, len(dataset.y_test), 256):
                wrapped(dataset.x_test[start:start + 256])
    state = {k: v.detach().clone() for k, v in session.plaintext_model().state_dict().items()}
    path = tmp_path / "victim.npz"
    session.save_transcripts(path)
    session.close()
    meta, arrays = transcript.load(path)
    messages = [Message(index=i, key=m["key"], step=m["step"], layer=m["layer"], op=m["op"],
                        operand=m["operand"], kind=m["kind"], dtype=m["dtype"], modulus=m["modulus"],
                        worker=m.get("worker", "main0"), role="main", array=arrays[m["key"]])
                for i, m in enumerate(meta)]
    hyper = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "optimizer": optimizer,
             "batch_size": batch_size, "loss": "ce", "protocol_options": dict(options)}
    knowledge = Knowledge(protocol="tempo", model_spec={"model": model, "hidden": list(hidden) if hidden else None,
                                                        "activation": activation, "dataset": "digits"},
                          input_shape=dataset.input_shape, num_classes=dataset.num_classes, hyper=hyper,
                          public_x=dataset.x_test.numpy(), public_y=dataset.y_test.numpy(),
                          public_split=f"digits test split ({len(dataset.y_test)} images)")
    return Victim(messages, knowledge, x_frame, y_frame, state, dataset.x_test.numpy(), dataset.y_test.numpy())
