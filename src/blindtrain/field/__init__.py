"""Prime-field building blocks shared by the field protocols (``slalom``, ``otp``).

* :mod:`.modular`   exact bilinear ops mod p (float64 with limb splitting), used by the worker and the enclave;
* :mod:`.codec`     fixed-point encoding into F_p with a per-tensor shared exponent and overflow-free scales;
* :mod:`.masks`     one-time pads uniform in F_p from the enclave CSPRNG, never reused;
* :mod:`.freivalds` randomized verification of every offloaded result;
* :mod:`.store`     sealed (AES-GCM) storage of precomputed unmask factors outside the enclave.
"""

from .codec import DEFAULT_MODULUS, centred, check_modulus
from .modular import mod_bilinear

__all__ = ["DEFAULT_MODULUS", "centred", "check_modulus", "mod_bilinear"]
