"""Enclave-side cryptography: the CSPRNG every secret comes from, and sealing."""

from .csprng import Csprng, NonceReuseError
from .keystore import KeyStore, SealError

__all__ = ["Csprng", "NonceReuseError", "KeyStore", "SealError"]
