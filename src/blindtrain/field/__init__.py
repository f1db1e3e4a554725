"""Prime-field building blocks shared by the field protocols (``slalom``, ``otp``).

* :mod:`.engine`    exact bilinear ops mod p < 2^61 (int8 limbs on ``torch._int_mm`` or float64 limbs), used by
                    the worker and the enclave (:mod:`.lowering`, :mod:`.limbs`, :mod:`.integers` beneath it);
* :mod:`.modular`   contraction lengths and a one-call front to the engine;
* :mod:`.codec`     fixed-point encoding into F_p with a per-tensor shared exponent and overflow-free scales;
* :mod:`.masks`     one-time pads uniform in F_p from the enclave CSPRNG, never reused;
* :mod:`.freivalds` randomized verification of every offloaded result;
* :mod:`.store`     sealed (AES-GCM) storage of precomputed unmask factors outside the enclave.
"""

from .codec import DEFAULT_MODULUS, centred, check_modulus
from .engine import FieldEngine
from .modular import mod_bilinear

__all__ = ["DEFAULT_MODULUS", "FieldEngine", "centred", "check_modulus", "mod_bilinear"]
