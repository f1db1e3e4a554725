"""Keys the worker cannot read: a worker process starts with no key path and no key material, so a
checkpoint it forges is rejected; under Gramine the sealing key comes from the SGX key device."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from blindtrain import checkpoint
from blindtrain.boundary.transport import ProcessTransport, worker_environment
from blindtrain.crypto import KeyStore, SealError
from blindtrain.worker import WorkerConfig


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to read a process's environment")
def test_a_worker_process_inherits_no_key_path_and_no_key_material(isolated_keystore, monkeypatch):
    store = KeyStore()  # the trusted side's key store: BLINDTRAIN_KEYSTORE (set by the fixture)
    key = store._sealing_key()
    monkeypatch.setenv("SOME_USER_SECRET", "hunter2")
    transport = ProcessTransport(WorkerConfig(name="main0", device="cpu"))
    try:
        environ = _environ_of(transport.pid)
    finally:
        transport.close()
    assert "BLINDTRAIN_KEYSTORE" in os.environ  # the trusted side has it ...
    assert "BLINDTRAIN_KEYSTORE" not in environ  # ... the worker does not
    assert "SOME_USER_SECRET" not in environ and "HOME" not in environ
    blob = "\0".join(f"{k}={v}" for k, v in environ.items())
    for secret in (str(isolated_keystore), str(isolated_keystore.parent), key.hex(), key.hex().upper()):
        assert secret not in blob
    assert environ.get("PATH") == os.environ.get("PATH")  # it still runs: only what PyTorch needs is kept


def test_worker_environment_keeps_only_the_allowlist():
    environ = {"PATH": "/bin", "PYTHONPATH": "src", "BLINDTRAIN_KEYSTORE": "/k", "HOME": "/root",
               "AWS_SECRET_ACCESS_KEY": "x", "CUDA_VISIBLE_DEVICES": "0", "LC_ALL": "C"}
    assert worker_environment(environ) == {"PATH": "/bin", "PYTHONPATH": "src", "CUDA_VISIBLE_DEVICES": "0",
                                           "LC_ALL": "C"}


def test_a_checkpoint_forged_with_what_the_worker_can_see_is_rejected(cli, tmp_path, isolated_keystore):
    """The attack of the issue: decrypt a checkpoint, swap two output classes, reseal, predict.  A worker
    process has no key path (above), so the best it can do is seal under a key of its own."""
    ckpt = tmp_path / "ck"
    assert cli("train", "--quiet", "--protocol", "enclave", "--steps", "3", "--checkpoint", ckpt).exit_code == 0
    worker_env = worker_environment()
    assert "BLINDTRAIN_KEYSTORE" not in worker_env
    forger = KeyStore(tmp_path / "worker-side" / "key")  # the only key a worker can make
    header, header_bytes, _ = checkpoint.read_header(ckpt.read_bytes(), path=ckpt)
    genuine = checkpoint.load(ckpt, keystore=KeyStore())
    state = genuine["model_state"]
    last = [k for k in state if k.endswith("weight")][-1]
    state[last] = state[last][[1, 0, *range(2, state[last].shape[0])]]  # swap classes 0 and 1
    buffer = io.BytesIO()
    torch.save({k: v for k, v in genuine.items() if k != "header"}, buffer)
    forged = forger.seal(buffer.getvalue(), purpose=checkpoint.PURPOSE, associated=header_bytes)
    ckpt.write_bytes(checkpoint.MAGIC + len(header_bytes).to_bytes(4, "big") + header_bytes + forged)
    result = cli("predict", "--checkpoint", ckpt)
    assert result.exit_code == 2 and "failed authentication" in result.output
    # control: the same forgery with the trusted side's key would have been accepted
    resealed = KeyStore().seal(buffer.getvalue(), purpose=checkpoint.PURPOSE, associated=header_bytes)
    ckpt.write_bytes(checkpoint.MAGIC + len(header_bytes).to_bytes(4, "big") + header_bytes + resealed)
    assert cli("predict", "--checkpoint", ckpt).exit_code == 0


def test_the_sgx_sealing_key_is_used_when_gramine_exposes_it(tmp_path):
    keys = tmp_path / "attestation" / "keys"
    keys.mkdir(parents=True)
    (keys / "_sgx_mrenclave").write_bytes(bytes(range(16)))
    store = KeyStore(tmp_path / "ks" / "key", sgx_keys_dir=keys)
    assert store.source == "sgx"
    blob = store.seal(b"weights", purpose="checkpoint")
    assert not (tmp_path / "ks" / "key").exists()  # no key file: the key lives in the CPU
    assert KeyStore(tmp_path / "elsewhere", sgx_keys_dir=keys).unseal(blob, purpose="checkpoint") == b"weights"
    (keys / "_sgx_mrenclave").write_bytes(bytes(range(1, 17)))  # another enclave's identity
    with pytest.raises(SealError):
        KeyStore(tmp_path / "ks" / "key", sgx_keys_dir=keys).unseal(blob, purpose="checkpoint")
    with pytest.raises(SealError):  # nor does the emulated key file open it
        KeyStore(tmp_path / "ks" / "key").unseal(blob, purpose="checkpoint")


def test_a_malformed_sgx_key_is_a_clear_error(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "_sgx_mrenclave").write_bytes(b"short")
    with pytest.raises(Exception, match="expected 16"):
        KeyStore(tmp_path / "key", sgx_keys_dir=keys).seal(b"x", purpose="p")
