"""The enclave's key store: the sealing key (AES-256-GCM) and monotonic counters per run.

Where the sealing key comes from:

* under Gramine-SGX, the CPU-derived sealing key Gramine exposes at
  ``/dev/attestation/keys/_sgx_mrenclave`` (16 bytes, bound to the enclave's identity),
  stretched to 32 bytes with HKDF-SHA256.  Only code inside that enclave can read it.
* in the emulated enclave, a 32-byte key file created with mode 0600 on first use.
  Path: ``$BLINDTRAIN_KEYSTORE``, else ``~/.config/blindtrain/sealing.key``.

The trusted side reads that path; workers never do.  Worker processes start with a scrubbed
environment (:mod:`blindtrain.boundary.transport`), so ``BLINDTRAIN_KEYSTORE`` and any other key path
is not inherited.  (An emulated enclave is an ordinary process: a worker process run by the same
user could still open the default key file if it guessed the path.  The deployment path, SGX, does
not have this weakness: the key never exists outside the enclave.)

Sealed blob layout: ``b"BTSEAL1" || nonce(12) || AES-GCM(ciphertext || tag)``.  The associated data
names what the blob is (a checkpoint, a table of unmask factors) and, optionally, binds further
context (a checkpoint's configuration, step, run identity and counter), so a blob of one kind or
context is not accepted as another.

Counters: ``KEYFILE.counters`` holds, sealed, the highest checkpoint counter written per run
identity.  Updates are read-modify-write under an exclusive ``flock`` and replace the file atomically.
A checkpoint whose counter is below its run's counter is a rollback.  (Without a hardware monotonic
counter an attacker who can replace files can also roll back the counter file itself; it is sealed,
so it cannot be forged, only replaced by an older copy.)
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import UsageError

MAGIC = b"BTSEAL1"
#: Where Gramine exposes SGX keys to the enclave.
SGX_KEYS_DIR = Path("/dev/attestation/keys")
#: The sealing key bound to the enclave's measurement (MRENCLAVE).
SGX_SEALING_KEY = "_sgx_mrenclave"
COUNTERS_PURPOSE = "blindtrain-counters-v1"
#: Environment variables that name key material; never handed to a worker.
SECRET_ENVIRONMENT = ("BLINDTRAIN_KEYSTORE",)


class SealError(UsageError):
    """A sealed blob was modified, truncated, or sealed under another key (exit 2)."""


def default_keystore_path() -> Path:
    env = os.environ.get("BLINDTRAIN_KEYSTORE")
    return Path(env) if env else Path.home() / ".config" / "blindtrain" / "sealing.key"


def _associated(purpose: str, associated: bytes) -> bytes:
    return purpose.encode() + (b"\x00" + associated if associated else b"")


class KeyStore:
    """The sealing key and per-run counters of the trusted side.

    Args:
        path: the emulated enclave's key file (default :func:`default_keystore_path`); the counters
            live beside it.
        sgx_keys_dir: where Gramine exposes SGX keys; when ``SGX_SEALING_KEY`` exists there, the
            sealing key is derived from it and ``path`` holds only the counters.
    """

    def __init__(self, path: str | os.PathLike | None = None, *,
                 sgx_keys_dir: str | os.PathLike = SGX_KEYS_DIR) -> None:
        self.path = Path(path) if path is not None else default_keystore_path()
        self.sgx_key_file = Path(sgx_keys_dir) / SGX_SEALING_KEY
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r}, source={self.source!r})"

    @property
    def source(self) -> str:
        """``sgx`` when the SGX sealing key is available, else ``file`` (emulated enclave)."""
        return "sgx" if self.sgx_key_file.exists() else "file"

    @property
    def counters_path(self) -> Path:
        return self.path.with_name(self.path.name + ".counters")

    # -- the key ----------------------------------------------------------------------------
    def _sealing_key(self) -> bytes:
        if self._key is None:
            self._key = self._read_sgx_key() if self.source == "sgx" else self._load_or_create()
        return self._key

    def _read_sgx_key(self) -> bytes:
        try:
            raw = self.sgx_key_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the SGX sealing key {self.sgx_key_file}: {exc.strerror or exc}") from None
        if len(raw) != 16:
            raise UsageError(f"SGX sealing key {self.sgx_key_file} has {len(raw)} bytes, expected 16")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"blindtrain sealing key v1").derive(raw)

    def _load_or_create(self) -> bytes:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return self._read_key_file()
        except OSError as exc:
            raise UsageError(f"cannot create key store {self.path}: {exc.strerror or exc}") from None
        key = os.urandom(32)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        return key

    def _read_key_file(self) -> bytes:
        try:
            key = self.path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read key store {self.path}: {exc.strerror or exc}") from None
        if len(key) != 32:
            raise UsageError(f"key store {self.path} is corrupt (expected 32 bytes, found {len(key)})")
        return key

    def check(self) -> None:
        """Fail now (exit 2) if the key store cannot be read or created, or its counters are corrupt.

        Creates the key file if it does not exist yet (the first run on this machine)."""
        if self.path.is_dir():
            raise UsageError(f"key store {self.path} is a directory; give the key file's path")
        self._sealing_key()
        self._read_counters()

    # -- sealing ----------------------------------------------------------------------------
    def seal(self, plaintext: bytes, *, purpose: str, associated: bytes = b"") -> bytes:
        """Encrypt and authenticate ``plaintext``; ``purpose`` and ``associated`` are bound, not hidden."""
        nonce = os.urandom(12)
        return MAGIC + nonce + AESGCM(self._sealing_key()).encrypt(nonce, plaintext,
                                                                   _associated(purpose, associated))

    def unseal(self, blob: bytes, *, purpose: str, associated: bytes = b"") -> bytes:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
            raise SealError(f"not a sealed {purpose} (bad header)")
        nonce, body = blob[len(MAGIC):len(MAGIC) + 12], blob[len(MAGIC) + 12:]
        try:
            return AESGCM(self._sealing_key()).decrypt(nonce, body, _associated(purpose, associated))
        except InvalidTag:
            raise SealError(f"sealed {purpose} failed authentication: modified, truncated or sealed "
                            f"under another key than {self.path}") from None

    # -- monotonic counters per run -----------------------------------------------------------
    def _read_counters(self) -> dict[str, int]:
        try:
            blob = self.counters_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UsageError(f"cannot read key store counters {self.counters_path}: {exc.strerror or exc}") from None
        try:
            counters = json.loads(self.unseal(blob, purpose=COUNTERS_PURPOSE))
        except SealError:
            raise SealError(f"key store counters {self.counters_path} failed authentication (modified or "
                            f"written under another key)") from None
        return {str(k): int(v) for k, v in counters.items()}

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def counter(self, run_id: str) -> int:
        """The highest counter recorded for ``run_id`` (0 if none)."""
        return self._read_counters().get(run_id, 0)

    def raise_counter(self, run_id: str, value: int) -> int:
        """Set ``run_id``'s counter to ``max(current, value)`` atomically; returns the new value."""
        from ..files import atomic_write

        with self._locked():
            counters = self._read_counters()
            counters[run_id] = max(counters.get(run_id, 0), int(value))
            atomic_write(self.counters_path, self.seal(json.dumps(counters, sort_keys=True).encode(),
                                                       purpose=COUNTERS_PURPOSE))
            os.chmod(self.counters_path, 0o600)
            return counters[run_id]
