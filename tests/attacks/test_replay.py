"""plain's view: the replay attack recovers labels, inputs and the exact final model (the lab's sanity check)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from blindtrain import Session
from blindtrain.attacks import replay
from blindtrain.attacks.recovery import Knowledge, Message
from blindtrain.models import build
from blindtrain.transcript import load


def _messages(path, role="main"):
    meta, arrays = load(path)
    return [Message(index=i, key=m["key"], step=m["step"], layer=m["layer"], op=m["op"], operand=m["operand"],
                    kind=m["kind"], dtype=m["dtype"], modulus=m["modulus"], worker=m["worker"], role=role,
                    array=arrays[m["key"]]) for i, m in enumerate(meta)]


def test_replay_recovers_the_exact_model_labels_and_inputs_from_plains_view(tmp_path):
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
                          public_x=np.zeros((0, 1, 8, 8), np.float32), public_y=np.zeros(0, np.int64),
                          public_split="none")
    session.save_transcripts(tmp_path / "plain.npz")
    session.close()
    recovery = replay.recover(_messages(tmp_path / "plain.npz"), knowledge)
    assert sorted(recovery.labels) == [0, 1, 2, 3, 4]
    for step, (x, y) in enumerate(batches):
        assert np.array_equal(recovery.labels[step], y.numpy())
        assert np.array_equal(recovery.inputs[step], x.numpy())
    for name, value in model.state_dict().items():
        assert torch.allclose(recovery.model_state[name], value, atol=1e-6), name
