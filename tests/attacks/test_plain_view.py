"""plain's view: the generic attacks recover labels, inputs and, by replaying the worker's own training, the
exact final model (the lab's sanity check), through the real session and transcript file."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from blindtrain import Session
from blindtrain.attacks import generic
from blindtrain.attacks.recovery import Knowledge, Message
from blindtrain.models import build
from blindtrain.transcript import load


def _messages(path, role="main"):
    meta, arrays = load(path)
    return [Message(index=i, key=m["key"], step=m["step"], layer=m["layer"], op=m["op"], operand=m["operand"],
                    kind=m["kind"], dtype=m["dtype"], modulus=m["modulus"], worker=m["worker"], role=role,
                    array=arrays[m["key"]]) for i, m in enumerate(meta)]


def test_plains_view_gives_up_the_exact_model_labels_and_inputs(tmp_path):
    torch.manual_seed(0)
    model = build("mlp", (1, 8, 8), 10, hidden=(16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    session = Session(protocol="plain", device="cpu", seed=0, transcript=True)
    model, optimizer = session.prepare(model, optimizer)
    batches = [(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(5)]
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        model.eval()
        model(torch.rand(4, 1, 8, 8))  # an evaluation forward is not a training step
    knowledge = Knowledge(protocol="plain", model_spec={"model": "mlp", "hidden": [16], "activation": "relu"},
                          input_shape=(1, 8, 8), num_classes=10,
                          hyper={"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "optimizer": "sgd"},
                          public_x=np.random.default_rng(0).random((64, 1, 8, 8), np.float32),
                          public_y=np.arange(64) % 10,
                          public_split="64 uniform images")
    session.save_transcripts(tmp_path / "plain.npz")
    session.close()
    messages = _messages(tmp_path / "plain.npz")
    labels, inputs = generic.labels(messages, knowledge), generic.inputs(messages, knowledge)
    stolen = generic.model(messages, knowledge).model_state
    for step, (x, y) in enumerate(batches):
        assert np.array_equal(labels.labels[step], y.numpy())
        assert np.allclose(inputs.inputs[step], x.numpy())
    for name, value in model.state_dict().items():
        assert torch.allclose(stolen[name], value, atol=1e-6), name
