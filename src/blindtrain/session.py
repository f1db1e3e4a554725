"""``bt.Session``: the public entry point that wraps an unchanged training loop.

    session = bt.Session(protocol="tempo", device="auto", seed=0)
    model, optimizer = session.prepare(model, optimizer)
    for x, y in loader:                      # the loop you already write
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    session.metrics()                        # the ledger as a dict
    session.close()

A training step is timed from the model's first training-mode forward to the
end of ``optimizer.step()`` (hooks the session installs); ``session.step`` counts
completed optimizer steps.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from . import protocols as protocol_registry
from .boundary import Boundary
from .boundary.transport import TRANSPORT_NAMES, TRANSPORTS
from .crypto import Csprng
from .errors import UsageError
from .glue import lazy_parameters
from .ledger import Ledger
from .placement import Placement, validate
from .runtime import EnclaveConfig, Runtime
from .threads import StepThreads
from .timing import time_nonlinear_layers
from .worker.adversaries import AdversarySpec
from .worker.worker import WorkerConfig, resolve_device

DEVICES = ("auto", "cpu", "cuda")


def _validate_device(device: str) -> str:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}; choose from auto, cpu, cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available here")
    return resolve_device(device)


class Session:
    """One protocol, its workers, its keys and its ledger.

    Args (keyword-only):
        protocol: a registered protocol name (``blindtrain protocols`` lists them).
        device: the worker's device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``.
        seed: seeds PyTorch's generators (model init, data order). Never keys: keys come
            from the enclave CSPRNG.
        transport: ``inproc``, ``process`` or ``dist`` (torch.distributed, :mod:`blindtrain.boundary.dist`).
        threads: thread count of the trusted side.
        adversary: worker behaviour for integrity tests (``honest`` by default).
        transcript: record every tensor each worker role receives.
        enclave_key: 32 bytes to key the enclave CSPRNG (tests only); default ``os.urandom``.
        epc_bytes: the emulated enclave's page-cache budget, for the modelled paging cost.
        worker_threads: threads of a worker process.
        worker_timeout: seconds a worker (any transport) may take to answer before it is declared dead.
        rendezvous: ``dist`` only: ``tcp://HOST:PORT`` to wait at for remote workers (default: launch local ones).
        dist_workers: ``dist`` only: worker ranks (default: what the protocol options ask for).
        **protocol_options: the protocol's own options (``unmask=``, ``fuse_activations=`` ...).
    """

    def __init__(self, *, protocol: str = "tempo", device: str = "auto", seed: int | None = 0,
                 transport: str = "inproc", threads: int | None = None, adversary: str | None = None,
                 transcript: bool = False, enclave_key: bytes | None = None, epc_bytes: int = 128 * 2**20,
                 worker_threads: int | None = None, worker_timeout: float = 600.0, rendezvous: str | None = None,
                 dist_workers: int | None = None, **protocol_options) -> None:
        protocol_cls = protocol_registry.get(protocol)
        if transport not in TRANSPORT_NAMES:
            raise UsageError(f"unknown transport {transport!r}; choose from {', '.join(TRANSPORT_NAMES)}")
        if threads is not None and threads < 1:
            raise UsageError("--threads must be a positive integer")
        self.protocol_name = protocol
        self.worker_device = _validate_device(device)
        self.adversary = _aim(AdversarySpec.parse(adversary), protocol_cls)
        if seed is not None:
            torch.manual_seed(seed)
        self.seed = seed
        self.ledger = Ledger()
        in_process = transport == "inproc"
        if (rendezvous or dist_workers) and transport != "dist":
            raise UsageError("rendezvous and dist workers apply to transport 'dist' (--transport dist)")
        if transport == "dist":
            from .boundary.dist import DistHub, worker_names

            names = worker_names(protocol_options)
            hub = DistHub(workers=dist_workers or len(names), names=names, rendezvous=rendezvous,
                          device=self.worker_device, threads=worker_threads, timeout=worker_timeout)

        def make_transport(role: str, index: int):
            config = WorkerConfig(name=f"{role}{index}", device=self.worker_device, threads=worker_threads,
                                  adversary=self.adversary if role == self.adversary.role else AdversarySpec(),
                                  in_process=in_process)
            if transport == "dist":
                return hub.transport(config)
            return TRANSPORTS[transport](config, timeout=worker_timeout)

        self.boundary = Boundary(ledger=self.ledger, transport_factory=make_transport,
                                 record_transcript=transcript)
        self.config = EnclaveConfig(threads=threads, epc_bytes=epc_bytes)
        if threads:
            torch.set_num_threads(threads)
        self.runtime = Runtime(ledger=self.ledger, boundary=self.boundary, rng=Csprng(enclave_key),
                               config=self.config, worker_device=self.worker_device, transport=transport)
        self.protocol = protocol_cls(self.runtime, **protocol_options)
        self._step_threads = StepThreads(enclave_work=protocol_cls.enclave_work)
        self.model: torch.nn.Module | None = None
        self._user_model: torch.nn.Module | None = None
        self.placement: Placement | None = None
        self._closed = False

    # -- the Opacus-like API ---------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                strict: bool = False, example_input=None):
        """Wrap ``model`` (and its ``optimizer``) for this protocol; returns ``(model, optimizer)``.

        What runs where is kept in :attr:`placement` (:mod:`blindtrain.placement`): each bilinear op, on
        the worker or in the enclave, and why; with ``example_input`` its share of the forward's MACs.
        ``strict=True`` raises :class:`UsageError` if an offloadable kind of op would stay in the enclave.
        """
        if self.model is not None:
            raise UsageError("this session already prepared a model; use one session per model")
        if not isinstance(model, torch.nn.Module):
            raise UsageError("prepare() takes a torch.nn.Module")
        if optimizer is not None and not self.protocol.info.trains:
            raise UsageError(f"protocol {self.protocol_name!r} is for inference only; it cannot train "
                             f"(use otp or tempo to train, then predict with {self.protocol_name})")
        if example_input is not None and lazy_parameters(model):
            with torch.no_grad():  # lazy modules (LazyLinear ...) take their shapes from one forward
                model(*example_input) if isinstance(example_input, tuple) else model(example_input)
        self.placement = validate(model, self.protocol_name, example_input=example_input, strict=strict)
        self._user_model = model
        wrapped, optimizer = self.protocol.wrap(model, optimizer)
        if self.protocol.info.name != "plain":  # plain's model runs on the worker: that is worker time
            time_nonlinear_layers(model, self.ledger)
        wrapped.register_forward_pre_hook(self._before_forward, prepend=True)  # before any protocol hook
        if optimizer is not None:
            optimizer.register_step_post_hook(self._after_step)
        self.model = wrapped
        return wrapped, optimizer

    def _before_forward(self, module, args) -> None:
        if self._closed:
            raise UsageError("this session is closed: its workers and keys are gone, so the prepared model "
                             "cannot run any more; evaluate before session.close(), or keep the weights with "
                             "a checkpoint (`blindtrain export` reads one) and load them into a fresh model")
        if module.training and torch.is_grad_enabled():
            self.ledger.step_begin()
            self._step_threads.begin()

    def _after_step(self, optimizer, args, kwargs) -> None:
        self._step_threads.end()
        self.ledger.step_end()
        self.runtime.step += 1

    @property
    def step(self) -> int:
        """Completed optimizer steps."""
        return self.runtime.step

    @step.setter
    def step(self, value: int) -> None:
        self.runtime.step = int(value)

    def state_dict(self) -> dict:
        """What resuming needs beyond the model's and optimizer's own state dicts, for a run resumed from it
        to equal the uninterrupted run bit for bit: the runtime's step and nonce counter, the enclave
        CSPRNG's key and drawn labels, and the protocol's own state (tempo: weight keys, key epochs, check
        vectors and projections).  SECRET (keys): put it only into a sealed checkpoint, never log it."""
        if self.model is None:
            raise UsageError("state_dict() needs a prepared model")
        return {"protocol": self.protocol_name, "runtime": self.runtime.state_dict(),
                "protocol_state": self.protocol.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`.  Call after :meth:`prepare`, with the model and optimizer
        already holding the checkpoint's plaintext state (``load_state_dict`` on each)."""
        if self.model is None:
            raise UsageError("load_state_dict() comes after prepare()")
        if not isinstance(state, dict) or state.get("protocol") != self.protocol_name:
            saved = state.get("protocol") if isinstance(state, dict) else None
            raise UsageError(f"the session state is for protocol {saved!r}, not {self.protocol_name!r}")
        self.runtime.load_state_dict(state["runtime"])
        self.protocol.load_state_dict(state["protocol_state"])

    def plaintext_model(self) -> torch.nn.Module:
        """The caller's model object holding the current plaintext weights (for checkpoints)."""
        if self._user_model is None:
            raise UsageError("no model prepared")
        self.protocol.materialize()
        return self._user_model

    def metrics(self) -> dict:
        """The ledger and protocol figures as a JSON-ready dict."""
        out = {"protocol": self.protocol_name, "device": self.worker_device,
               "transport": self.runtime.transport, "adversary": self.adversary.name}
        out.update(self.ledger.as_dict())
        out["modelled"] = self.config.modelled_costs(self.ledger)
        out["protocol_info"] = {k: v for k, v in vars(self.protocol.info).items()}
        out["protocol_summary"] = self.protocol.summary()
        return out

    def save_transcripts(self, path: str | os.PathLike) -> list[Path]:
        """Write the main worker's transcript to ``path`` and each other role's to ``path`` with
        ``.ROLE`` before the suffix (e.g. ``run.mask.npz``).  Returns the files written."""
        path = Path(path)
        written = []
        for role, transcript in sorted(self.boundary.transcripts.items()):
            target = path if role == "main" else path.with_name(f"{path.stem}.{role}{path.suffix or '.npz'}")
            written.append(transcript.save(target))
        if "main" not in self.boundary.transcripts:  # nothing crossed (enclave): an empty, valid transcript
            from .transcript import Transcript

            written.insert(0, Transcript().save(path))
        return written

    def close(self) -> None:
        if not self._closed:
            self._step_threads.end()
            self.protocol.close()
            self.boundary.close()
            self._closed = True

    def __deepcopy__(self, memo) -> "Session":
        """A deep copy of a prepared model (its hooks reach the session) stays in this session: there is
        one enclave, one key stream and one ledger."""
        return self

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Session"]


def _aim(spec: AdversarySpec, protocol_cls) -> AdversarySpec:
    """The adversary on one of the protocol's worker roles: ``role=main`` (the default) means its first."""
    roles = tuple(protocol_cls.adversary_roles) + tuple(r for r in protocol_cls.transcript_kinds
                                                        if r not in protocol_cls.adversary_roles)
    if spec.role in roles or not protocol_cls.transcript_kinds:
        return spec
    if spec.role == "main":
        return dataclasses.replace(spec, role=roles[0])
    raise UsageError(f"adversary role {spec.role!r}: protocol {protocol_cls.info.name!r} has worker roles "
                     f"{', '.join(roles)}")
