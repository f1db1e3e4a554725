"""Model theft where the worker holds the weights: decoded weights + what stays hidden fitted on public data.

The field protocols send every Linear / Conv2d weight; biases (and normalisation parameters) stay in
the enclave.  The attacker loads the decoded weights into :meth:`Knowledge.build_model` and fits
only the parameters it never saw (biases, norm affine parameters) on the public split with the
weights frozen: full-batch L-BFGS on the cross-entropy plus the Gaussian prior of PyTorch's default
bias initialisation (maximum a posteriori; without the prior 180 public samples pull the biases far
from the victim's), a bounded number of iterations.  Normalisation running statistics are
re-estimated on the public split.  Weights that never crossed are fitted the same way (named in the
notes).

When the activation is not positively homogeneous (sigmoid, arctan, softplus) each layer's scale
changes the function, so the power-of-two exponent the attack inferred from the init prior is
corrected on the public split (:func:`_exponent_corrections`, within ±:data:`BOUND`).

Measured on digits MLPs: zero biases already give the victim's predictions (agreement 1.0), so the bias
fit is not load-bearing there; it is kept because it is the honest estimate of what the worker never sees.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .recovery import Knowledge
from .visible_weights import WeightSnapshot

#: public samples used for the fit (bounded, so the attack's time stays small on large splits)
FIT_SAMPLES = 2048
FIT_ITERATIONS = 60
#: exponent corrections are searched within ±BOUND (the init prior is rarely off by more than one)
BOUND = 2.0


def build_stolen(knowledge: Knowledge, weights: dict[str, WeightSnapshot], *,
                 fit_hidden: bool = True) -> tuple[torch.nn.Module, list[str]]:
    """The victim's architecture with the stolen weights; hidden parameters fitted on the public split.

    Returns ``(model, notes)``; ``model`` is in eval mode.
    """
    torch.manual_seed(0)
    model = knowledge.build_model()
    notes: list[str] = []
    state = model.state_dict()
    stolen = set()
    for layer, snap in weights.items():
        if snap.name in state and tuple(state[snap.name].shape) == snap.encoded.shape:
            state[snap.name] = torch.from_numpy(snap.weight).to(state[snap.name].dtype)
            stolen.add(snap.name)
    # biases: a neutral start (zero) rather than a random guess
    for name, value in state.items():
        if name.endswith(".bias") and name.rsplit(".", 1)[0] + ".weight" in stolen:
            state[name] = torch.zeros_like(value)
    model.load_state_dict(state)
    hidden = [(name, p) for name, p in model.named_parameters() if name not in stolen]
    missing_weights = [name for name, _ in hidden if name.endswith("weight")
                       and not isinstance(_owner(model, name), (torch.nn.BatchNorm2d, torch.nn.LayerNorm,
                                                                torch.nn.BatchNorm1d))]
    if missing_weights:
        notes.append(f"weights never seen, fitted on the public split like the biases: {', '.join(missing_weights)}")
    corrections = {}
    if fit_hidden and stolen and knowledge.model_spec.get("activation", "relu") != "relu":
        corrections = _exponent_corrections(model, sorted(stolen), knowledge)
        if any(corrections.values()):
            with torch.no_grad():
                for name, shift in corrections.items():
                    model.get_parameter(name).mul_(2.0 ** shift)
        notes.append("activation is not positively homogeneous, so each layer's scale is identifiable from the "
                     "public split: power-of-two exponent corrections fitted there: "
                     + ", ".join(f"{name} {shift:+d}" for name, shift in corrections.items()))
    if fit_hidden and hidden:
        seconds = _fit(model, [p for _, p in hidden], stolen_params=[p for n, p in model.named_parameters()
                                                                     if n in stolen], knowledge=knowledge)
        notes.append(f"{len(hidden)} parameter tensors the worker never sees ({_names(hidden)}) fitted on the "
                     f"public split (maximum a posteriori under the default init's prior, "
                     f"{min(len(knowledge.public_y), FIT_SAMPLES)} samples, weights frozen, "
                     f"{FIT_ITERATIONS} L-BFGS iterations, {seconds:.2f} s)")
    model.eval()
    return model, notes


def _exponent_corrections(model: torch.nn.Module, names: list[str], knowledge: Knowledge) -> dict[str, int]:
    """Per stolen weight, the integer ``k`` such that ``W·2^k`` fits the public split best.

    The true scale is a power of two (the encoding's exponent), so a continuous gain ``2^g`` per layer is
    fitted jointly with the biases (L-BFGS, weights' directions frozen) and rounded to the nearest integer.
    """
    from torch.func import functional_call

    x = torch.from_numpy(np.asarray(knowledge.public_x[:FIT_SAMPLES], dtype=np.float32))
    y = torch.from_numpy(np.asarray(knowledge.public_y[:FIT_SAMPLES], dtype=np.int64))
    base = {name: model.get_parameter(name).detach().clone() for name in names}
    biases = {name: torch.zeros_like(p) for name, p in model.named_parameters() if name not in base}
    gains = torch.zeros(len(names), requires_grad=True)
    free = [gains, *(b.requires_grad_(True) for b in biases.values())]
    optimizer = torch.optim.LBFGS(free, lr=0.5, max_iter=FIT_ITERATIONS, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        bounded = BOUND * torch.tanh(gains / BOUND)
        params = {**biases, **{name: base[name] * 2.0 ** bounded[i] for i, name in enumerate(names)}}
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    bounded = BOUND * torch.tanh(gains.detach() / BOUND)
    return {name: int(round(float(bounded[i]))) for i, name in enumerate(names)}


def _owner(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model


def _names(params) -> str:
    names = [n for n, _ in params]
    return ", ".join(names[:6]) + (f" ... ({len(names)} in all)" if len(names) > 6 else "")


def _init_precisions(model, hidden_params) -> list[tuple[torch.Tensor, float]]:
    """(bias, 1/variance) of PyTorch's default bias init ``U(±1/√fan_in)``: variance ``1/(3·fan_in)``."""
    out = []
    wanted = {id(p) for p in hidden_params}
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and module.bias is not None \
                and id(module.bias) in wanted:
            fan_in = int(np.prod(module.weight.shape[1:]))
            out.append((module.bias, 3.0 * fan_in))
    return out


def _fit(model, hidden_params, *, stolen_params, knowledge: Knowledge) -> float:
    import time

    start = time.perf_counter()
    x = torch.from_numpy(np.asarray(knowledge.public_x[:FIT_SAMPLES], dtype=np.float32))
    y = torch.from_numpy(np.asarray(knowledge.public_y[:FIT_SAMPLES], dtype=np.int64))
    for p in stolen_params:
        p.requires_grad_(False)
    has_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_norm:  # running statistics from the public split
        model.train()
        with torch.no_grad():
            for chunk in torch.split(x, 256):
                model(chunk)
    model.eval()
    optimizer = torch.optim.LBFGS(hidden_params, lr=0.5, max_iter=FIT_ITERATIONS, line_search_fn="strong_wolfe")

    prior = _init_precisions(model, hidden_params)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        for param, precision in prior:  # MAP: Gaussian prior of the default init, per public sample
            loss = loss + 0.5 * precision * param.square().sum() / len(y)
        if not math.isfinite(float(loss.detach())):
            return loss
        loss.backward()
        return loss

    optimizer.step(closure)
    for p in stolen_params:
        p.requires_grad_(True)
    return time.perf_counter() - start
