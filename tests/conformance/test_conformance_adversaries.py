"""Every adversary is caught by every protocol that verifies results: exit code 3 and a message naming the
layer, the op and the step.  Through the session API (in-process worker); one CLI run per protocol checks
the exit code, that no checkpoint is written from the tampered step, and the metrics' status."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from blindtrain import checkpoint as ckpt
from blindtrain.cli import main
from blindtrain.crypto import KeyStore
from blindtrain.errors import BlindtrainError
from blindtrain.worker.adversaries import MALFORMED_FORMS, NAMES

from .harness import REGISTRY, batch, session, step, tiny_model

VERIFYING = sorted(name for name, cls in REGISTRY.items() if cls.verifies_results)
#: ``hang`` needs a worker process and the timeout: tests/security/test_security_workers.py
ADVERSARIES = [n for n in NAMES if n not in ("honest", "hang")] + [f"malformed:form={f}" for f in MALFORMED_FORMS]


def _caught(protocol: str, adversary: str, steps: int = 3) -> BlindtrainError:
    s, wrapped, optimizer = session(protocol, model=tiny_model(), lr=0.01, adversary=adversary)
    try:
        for index in range(steps):
            step(protocol, wrapped, optimizer, *batch(index))
            if optimizer is None:
                s.runtime.step += 1  # inference: a batch is a step
    except BlindtrainError as exc:
        return exc
    finally:
        s.close()
    pytest.fail(f"{protocol} did not notice adversary {adversary!r}")


def test_the_registry_has_protocols_that_verify():
    assert {"otp", "slalom", "tempo"} <= set(VERIFYING)


#: (protocol, role): every adversary is aimed at each worker role of the protocol (shares: s0, s1, dealer)
AIMED = [pytest.param(name, role, id=name if role == "main" else f"{name}-{role}")
         for name in VERIFYING for role in REGISTRY[name].adversary_roles]


def _aimed(adversary: str, role: str) -> str:
    if role == "main":
        return adversary
    return f"{adversary}{',' if ':' in adversary else ':'}role={role}"


@pytest.mark.parametrize("adversary", ADVERSARIES)
@pytest.mark.parametrize("protocol,role", AIMED)
def test_every_adversary_exits_3_naming_layer_op_and_step(protocol, role, adversary):
    exc = _caught(protocol, _aimed(adversary, role))
    assert exc.exit_code == 3
    # the default trigger: the first result of step 1, the first layer's forward
    assert "layer '0'" in str(exc) and "op 'forward'" in str(exc) and "step 1" in str(exc), str(exc)


@pytest.mark.parametrize("layer,op", [("2", "forward"), ("5", "forward"), ("2", "grad_input"),
                                      ("7", "grad_input")])
@pytest.mark.parametrize("protocol", VERIFYING)
def test_tampering_with_any_layer_kind_and_op_is_caught_there(protocol, layer, op):
    if op != "forward" and not REGISTRY[protocol].info.trains:
        pytest.skip("inference: no gradients")
    exc = _caught(protocol, f"tamper:layer={layer},op={op},step=2", steps=4)
    assert exc.exit_code == 3
    assert f"layer '{layer}'" in str(exc) and f"op '{op}'" in str(exc) and "step 2" in str(exc), str(exc)


@pytest.mark.parametrize("protocol", sorted(name for name in VERIFYING if REGISTRY[name].info.trains))
def test_cli_exits_3_and_keeps_no_checkpoint_from_the_tampered_step(protocol, tmp_path):
    ckpt_path, keystore, metrics = tmp_path / "c.ckpt", tmp_path / "key", tmp_path / "m.json"
    result = CliRunner().invoke(main, [
        "train", "--protocol", protocol, "--hidden", "16", "--steps", "3", "--batch-size", "16", "--device", "cpu",
        "--quiet", "--adversary", "tamper:layer=3,op=forward", "--checkpoint", str(ckpt_path), "--checkpoint-every", "1",
        "--keystore", str(keystore), "--metrics", str(metrics)])
    assert result.exit_code == 3, result.output
    assert "layer '3'" in result.output and "op 'forward'" in result.output and "step 1" in result.output
    assert ckpt.load(ckpt_path, keystore=KeyStore(keystore))["step"] == 1  # written after step 0 only
    data = json.loads(metrics.read_text())
    assert data["status"] == "integrity_violation" and data["integrity_failures"] == 1
