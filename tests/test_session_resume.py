"""Bit-exact resume: N steps, a sealed checkpoint (with ``session.state_dict()``), M more steps in a new
session equals N + M uninterrupted steps bit for bit — under plain, enclave and tempo (worker-held SGD
across a key rotation, and enclave-side Adam).  The uninterrupted run's keys come from a fixed enclave key
(tempo's rounding depends on its keys); the resumed session starts with a fresh random key and must take the
checkpoint's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import blindtrain as bt
from blindtrain import checkpoint as ckpt
from blindtrain import data as datasets
from blindtrain.crypto import KeyStore
from blindtrain.models import build
from blindtrain.train import evaluate

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits", seed=0)


def _train(protocol, dataset, *, steps, path, resume=None, optimizer="sgd", options=None):
    """``steps`` steps from scratch (``enclave_key=KEY``) or from the checkpoint ``resume`` (a fresh random
    enclave key, replaced by the checkpoint's), then an evaluation and a checkpoint at ``path``, as
    ``blindtrain train`` does.  Returns the checkpoint's payload."""
    keystore = KeyStore(None)
    torch.manual_seed(0)
    model = build("mlp", dataset.input_shape, dataset.num_classes)
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    start = 0
    payload = ckpt.load(resume, keystore=keystore) if resume else None
    if payload is not None:
        model.load_state_dict(payload["model_state"])
        opt.load_state_dict(payload["optimizer_state"])
        start = payload["step"]
    session = bt.Session(protocol=protocol, seed=None, device="cpu", enclave_key=None if resume else KEY,
                         **(options or {}))
    model, opt = session.prepare(model, opt)
    if payload is not None:
        session.load_state_dict(payload["extra"]["session_state"])
    assert session.step == start
    batches = list(dataset.batches(batch_size=32, epoch=0, seed=0))
    model.train()
    for x, y in batches[start:start + steps]:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    evaluate(model, dataset.x_test[:64], dataset.y_test[:64])  # an evaluation between the two halves
    plain = session.plaintext_model()
    ckpt.save(path, keystore=keystore, model_spec={}, model_state=plain.state_dict(),
              optimizer_state=opt.state_dict(), step=session.step, extra={"session_state": session.state_dict()})
    session.close()
    return ckpt.load(path, keystore=keystore)


def _assert_bit_exact(a, b):
    assert a["step"] == b["step"]
    for name in a["model_state"]:
        assert torch.equal(a["model_state"][name], b["model_state"][name]), name
    for key, state in a["optimizer_state"]["state"].items():
        for entry, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer_state"]["state"][key][entry]))


@pytest.mark.parametrize("protocol,optimizer,options", [
    ("plain", "sgd", {}), ("enclave", "sgd", {}),
    ("tempo", "sgd", {"rotate_every": 3}),  # epochs start at 0, 3 (before the checkpoint at 4), 6, 9 (after)
    ("tempo", "adam", {}),                   # enclave-side update: a key epoch per step
])
def test_resumed_run_equals_the_uninterrupted_run_bit_for_bit(protocol, optimizer, options, digits, tmp_path):
    whole = _train(protocol, digits, steps=9, path=tmp_path / "whole.ck", optimizer=optimizer, options=options)
    _train(protocol, digits, steps=4, path=tmp_path / "half.ck", optimizer=optimizer, options=options)
    resumed = _train(protocol, digits, steps=5, path=tmp_path / "resumed.ck", resume=tmp_path / "half.ck",
                     optimizer=optimizer, options=options)
    _assert_bit_exact(whole, resumed)


def test_tempo_resume_without_the_session_state_is_not_bit_exact(digits, tmp_path):
    """The control: the same resume with the session state dropped (fresh keys) differs — so the test above
    measures the state, not an accident of rounding."""
    options = {"rotate_every": 3}
    whole = _train("tempo", digits, steps=9, path=tmp_path / "whole.ck", options=options)
    half = _train("tempo", digits, steps=4, path=tmp_path / "half.ck", options=options)
    keystore = KeyStore(None)
    half["extra"] = {}
    ckpt.save(tmp_path / "bare.ck", keystore=keystore, model_spec={}, model_state=half["model_state"],
              optimizer_state=half["optimizer_state"], step=half["step"])
    torch.manual_seed(0)
    model = build("mlp", digits.input_shape, digits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model.load_state_dict(half["model_state"])
    opt.load_state_dict(half["optimizer_state"])
    with bt.Session(protocol="tempo", seed=None, device="cpu", **options) as session:
        model, opt = session.prepare(model, opt)
        session.step = half["step"]
        for x, y in list(digits.batches(batch_size=32, epoch=0, seed=0))[4:9]:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        state = session.plaintext_model().state_dict()
    assert not all(torch.equal(state[k], whole["model_state"][k]) for k in state)


@pytest.mark.parametrize("protocol", ["tempo", "plain"])
def test_cli_resume_is_bit_exact(protocol, tmp_path, monkeypatch):
    """``blindtrain train --resume`` wires it: the checkpoint carries ``session.state_dict()`` and the
    resumed run loads it.  The enclave key is fixed for the two first runs and different for the resumed
    one (which must take the checkpoint's)."""
    from click.testing import CliRunner

    import blindtrain.session as session_module
    from blindtrain.cli import main
    from blindtrain.crypto import Csprng

    def train(*args, key):
        monkeypatch.setattr(session_module, "Csprng", lambda _=None: Csprng(key))
        extra = ["--rotate-every", "3"] if protocol == "tempo" else []
        result = CliRunner().invoke(main, ["train", "--protocol", protocol, "--quiet", "--device", "cpu", *extra,
                                           *map(str, args)])
        assert result.exit_code == 0, result.output

    train("--steps", 9, "--checkpoint", tmp_path / "whole.ck", key=KEY)
    train("--steps", 4, "--checkpoint", tmp_path / "half.ck", key=KEY)
    train("--steps", 5, "--resume", tmp_path / "half.ck", "--checkpoint", tmp_path / "resumed.ck", key=bytes(32))
    keystore = KeyStore(None)
    _assert_bit_exact(ckpt.load(tmp_path / "whole.ck", keystore=keystore),
                      ckpt.load(tmp_path / "resumed.ck", keystore=keystore))
