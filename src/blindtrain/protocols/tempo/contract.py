"""Tempo under ordinary PyTorch habits (DESIGN.md, "The PyTorch contract"): worker-held weights are
materialized for ``state_dict()`` / ``load_state_dict()`` of the model and the optimizer, and an optimizer
that tempo does not drive is stopped, with the alternative named, before it would step worker-held weights.

What the other habits need lives where the state is: per-call forward state for a layer reused in one
forward or several forwards before one backward (:class:`~.layers.TempoCall`), weight gradients summed
until the step (:meth:`~.projections.Projections._hold_grad_projections`).
"""

from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ...boundary import Request, Tag
from ...errors import UsageError


#: what a placeholder ``.grad`` lets through: shape / dtype / device reads and what ``zero_grad`` does
_GRAD_ALLOWED = {"zero_", "_foreach_zero_", "detach_", "requires_grad_", "__repr__", "__format__", "size", "dim",
                 "numel", "is_floating_point", "is_sparse"}


class WorkerHeldGrad(torch.Tensor):
    """The ``.grad`` of a weight the workers hold (size 0, like the weight's enclave-side data): the gradient
    itself stays on the workers, in the weight's key, until the optimizer's step applies it there.  Any
    computation with it (``clip_grad_norm_``, a gradient-norm log, ``GradScaler.unscale_``) raises
    :class:`UsageError` naming the alternative, instead of silently treating the gradient as absent."""

    layer_name = "?"
    zeroed = False  #: ``zero_grad(set_to_none=False)`` zeroed it: the gradient it stands for is gone
    applied = False  #: the step applied the gradient on the workers and dropped it there

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _GRAD_ALLOWED or name == "__get__" or name.endswith(".__get__"):
            if name in ("zero_", "_foreach_zero_"):
                for tensor in _tensors(args):
                    if isinstance(tensor, WorkerHeldGrad):
                        tensor.zeroed = True
            return super().__torch_function__(func, types, args, kwargs or {})
        held = next((a.layer_name for a in _tensors(args) if isinstance(a, WorkerHeldGrad)), "?")
        raise UsageError(
            f"tempo: the .grad of {held}.weight is a placeholder: tempo keeps that gradient on the worker, in "
            f"the weight's key, and applies it there at optimizer.step(); {name}() cannot read it (e.g. "
            f"clip_grad_norm_ or a gradient-norm log).  Prepare with update='enclave' to get plaintext "
            f"gradients of every layer back into the enclave (checked), or clip only the enclave-held "
            f"parameters")


def _tensors(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _tensors(a)
        elif isinstance(a, torch.Tensor):
            yield a


class Contract:
    """State-dict hooks and the foreign-optimizer guard (a mixin of :class:`~.protocol.Tempo`)."""

    def _install_contract(self, model: torch.nn.Module, optimizer) -> None:
        """Hooks on ``model`` and ``optimizer`` (and one global optimizer-step pre-hook, removed at close)."""
        me = weakref.ref(self)

        def materialize(*_args, **_kwargs):  # the hooks hold the protocol weakly: a closed session goes away
            protocol = me()
            if protocol is not None and not protocol._closed:
                protocol.materialize()

        self._closed = False
        self._hooks = []
        # on the model and on each offloaded module: a submodule's own state_dict() materializes too
        for module in [model] + [layer.site.module for layer in self.layers.values()]:
            self._hooks += [module.register_state_dict_pre_hook(materialize),
                            module.register_load_state_dict_pre_hook(materialize)]
        if optimizer is not None:
            self._hooks.append(optimizer.register_state_dict_pre_hook(materialize))

        def guard(opt, args, kwargs):
            protocol = me()
            if protocol is not None and not protocol._closed:
                protocol._refuse_foreign_step(opt)

        self._hooks.append(register_optimizer_step_pre_hook(guard))
        if optimizer is not None:
            self._hooks.append(optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._unguard_grads()))

    def _guard_grad(self, layer) -> None:
        """After a backward that left ``layer``'s weight gradient on the workers: its ``.grad`` becomes a
        :class:`WorkerHeldGrad` (where the enclave holds no weight data, the case after the first forward)."""
        param = layer.param
        guard = layer.grad_guard
        if param.numel() == 0 and (guard is None or param.grad is not guard or guard.zeroed):
            guard = torch.zeros(0, dtype=param.dtype).as_subclass(WorkerHeldGrad)
            guard.layer_name = layer.site.name
            param.grad = layer.grad_guard = guard

    def _mark_applied(self, layer) -> None:
        """After the step applied ``layer``'s gradient on the workers (which drop it): ``.grad`` says so.  A
        step before the user zeroes it would, in PyTorch, apply that gradient again (alone, or added to the
        next backward's); tempo no longer has it, so that step raises (:meth:`_refuse_stale_grad`) instead of
        silently using none."""
        self._guard_grad(layer)
        if layer.grad_guard is not None:
            layer.grad_guard.applied = True

    @staticmethod
    def _refuse_stale_grad(layer, what: str) -> None:
        guard = layer.grad_guard
        if guard is not None and guard.applied and not guard.zeroed and layer.param.grad is guard:
            raise UsageError(f"tempo: {what} for {layer.site.name} without optimizer.zero_grad() since the last "
                             f"optimizer.step(): PyTorch would apply the gradient of that step again, which tempo "
                             f"applied on the worker and dropped; call optimizer.zero_grad() after each step (or "
                             f"prepare with update='enclave' to keep PyTorch's .grad)")

    @staticmethod
    def _grads_zeroed(layer) -> bool:
        """Whether the user zeroed ``layer``'s weight gradient since its last backward (``zero_grad()``,
        ``.grad = None``, ``zero_grad(set_to_none=False)``): then a pending gradient on the workers is dropped,
        not added to (as ``.grad`` would start from zero)."""
        guard = layer.grad_guard
        return guard is not None and (layer.param.grad is not guard or guard.zeroed)

    def _unguard_grads(self) -> None:
        """Before the prepared optimizer's step: placeholders out of its way (it skips a None ``.grad``; the
        gradients are applied on the workers, :meth:`~.sgd.WorkerSgd._after_optimizer_step`)."""
        for layer in self.layers.values():
            self._refuse_stale_grad(layer, "optimizer.step()")
            if layer.pending is not None and self._grads_zeroed(layer):  # zero_grad(), then step()
                if layer.param.grad is layer.grad_guard:  # zeroed in place: SGD steps with a zero gradient
                    layer.pending = {k: torch.zeros_like(v) for k, v in layer.pending.items()}
                    self._call_each([(k, Request("axpy", {}, Tag(self.runtime.step, layer.site.name, "update"),
                                                 params={"target": f"{layer.h}/g", "alpha": 0.0, "terms": []},
                                                 return_result=False)) for k in range(len(layer.blocks))])
                else:  # set to None: SGD skips the weight
                    layer.pending = None
                    self._drop_grad(layer)
            if isinstance(layer.param.grad, WorkerHeldGrad):
                layer.param.grad = None
            layer.grad_guard = None

    def _refuse_foreign_step(self, optimizer) -> None:
        """An optimizer other than the one given to ``session.prepare`` about to step weights the workers
        hold: its step would not reach them (their ``.grad`` is None, their data empty), so it is refused."""
        if optimizer is self.optimizer:
            return
        resident = {id(layer.param): name for name, layer in self.layers.items() if layer.resident}
        hit = [resident[id(p)] for group in optimizer.param_groups for p in group["params"] if id(p) in resident]
        if hit:
            raise UsageError(
                f"tempo: this optimizer was built after session.prepare() (or is a second optimizer), but it would "
                f"step the weights of {', '.join(hit)}, which tempo keeps on the worker and updates there at the "
                f"step of the optimizer given to prepare(); pass one optimizer over all parameters to "
                f"session.prepare() (parameter groups for different learning rates), or prepare with "
                f"update='enclave' and no optimizer")

    def close(self) -> None:
        self._closed = True
        for hook in getattr(self, "_hooks", []):
            hook.remove()
        self._hooks = []
        super().close()
