"""Typed protocol options: one frozen dataclass per protocol, validated in one place.

Each protocol declares ``Options``, a subclass of :class:`ProtocolOptions` whose fields are made with
:func:`option` (default, help, and the allowed range or choices).  :meth:`ProtocolOptions.parse` turns
what a user gave (keyword arguments of ``Session``, or the CLI's flags and ``--option KEY=VALUE``) into
an instance, or raises :class:`OptionError` naming the parameter as the API spells it.  The CLI
re-renders that error with the flag the user typed (:meth:`OptionError.render`), and builds the
``--option`` help and the ``blindtrain protocols`` table from :func:`describe`.

Types: ``int`` (an int, or a string of one; never a bool), ``bool`` (a bool, or ``true``/``false``),
``str`` with ``choices``, and ``X | None``.  ``None`` given for an option that is not optional means
its default (the CLI passes unset flags that way).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..errors import UsageError


class OptionError(UsageError):
    """A protocol option is unknown or out of range.  ``str()`` names it as the Python API spells it
    (``unmask``); :meth:`render` with the CLI's spelling (``--unmask``, ``--option repetitions``)."""

    def __init__(self, protocol: str, name: str | None, problem: str, *, unknown: bool = False):
        self.protocol, self.option, self.problem, self.unknown = protocol, name, problem, unknown
        super().__init__(self.render(name))

    def render(self, spelling: str | None) -> str:
        """The message with the option spelled ``spelling`` (a CLI flag starts with ``--``)."""
        protocol = f"protocol {self.protocol!r}"
        if spelling is None:
            return f"{protocol}: {self.problem}"
        if spelling.startswith("--"):
            return f"{protocol}: {spelling}: {'no such option ' if self.unknown else ''}{self.problem}"
        return f"{protocol} has no option {spelling} {self.problem}" if self.unknown else \
            f"{protocol} option {spelling} {self.problem}"


#: protocol name -> its options class (every protocol that has options)
OPTIONS: dict[str, type["ProtocolOptions"]] = {}


def option(default: Any, help: str, *, choices: tuple | None = None, low: int | None = None,
           high: int | None = None, flag: str | None = None) -> Any:
    """A dataclass field of a protocol option: its default, its one-line help, its range or choices,
    and the CLI flag that sets it, if it has its own (else ``--option NAME=VALUE``)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "low": low,
                                                        "high": high, "flag": flag})


@dataclass(frozen=True)
class OptionSpec:
    """One option as the CLI and the protocols table show it."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple | None
    low: int | None
    high: int | None
    flag: str

    def allowed(self) -> str:
        if self.choices:
            return " | ".join(str(c) for c in self.choices)
        if self.low is not None or self.high is not None:
            low = "" if self.low is None else str(self.low)
            high = "" if self.high is None else str(self.high)
            return f"{self.type} in [{low}, {high}]" if self.low is not None and self.high is not None else \
                (f"{self.type} >= {low}" if self.low is not None else f"{self.type} <= {high}")
        return self.type


@dataclass(frozen=True)
class ProtocolOptions:
    """Base of every protocol's options (a protocol without options uses it as is)."""

    protocol: ClassVar[str] = "?"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "protocol" in cls.__dict__:
            OPTIONS[cls.protocol] = cls

    @classmethod
    def parse(cls, values: Mapping[str, Any] | None = None) -> "ProtocolOptions":
        """The options from user-given ``values`` (unknown names and bad values raise :class:`OptionError`;
        ``None`` for an option that is not optional means its default)."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionError(cls.protocol, unknown[0], f"(its options: {', '.join(sorted(known)) or 'none'})",
                              unknown=True)
        hints = typing.get_type_hints(cls)
        return cls(**{k: v for k, v in values.items() if v is not None or _optional(hints[k])})

    def __post_init__(self) -> None:
        """Every field checked against its type, choices and range (coerced where the spelling is
        unambiguous: ``"5"`` for an int), then :meth:`check` for constraints across options."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(self.protocol, f.name, hints[f.name], getattr(self, f.name), f.metadata)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Constraints across options (override; raise :meth:`error`)."""

    def error(self, name: str | None, problem: str) -> OptionError:
        return OptionError(self.protocol, name, problem)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def choices(cls, name: str) -> tuple:
        """The allowed values of option ``name`` (a ``Literal`` type or ``choices=``)."""
        (spec,) = [spec for spec in describe(cls) if spec.name == name]
        return spec.choices

    @classmethod
    def defaults(cls) -> dict:
        return {f.name: f.default for f in dataclasses.fields(cls)}


def describe(options: type[ProtocolOptions]) -> list[OptionSpec]:
    """Every option of a protocol, for help texts and tables."""
    hints = typing.get_type_hints(options)
    specs = []
    for f in dataclasses.fields(options):
        meta = f.metadata
        choices = meta.get("choices") or _literal_choices(hints[f.name])
        specs.append(OptionSpec(f.name, _type_name(hints[f.name]), f.default, meta.get("help", ""), choices,
                                meta.get("low"), meta.get("high"),
                                meta.get("flag") or f"--option {f.name}=VALUE"))
    return specs


def _optional(hint) -> bool:
    return type(None) in typing.get_args(hint) and _is_union(hint)


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _base_type(hint):
    if _is_union(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _literal_choices(hint) -> tuple | None:
    base = _base_type(hint)
    return tuple(typing.get_args(base)) if typing.get_origin(base) is typing.Literal else None


def _type_name(hint) -> str:
    base = _base_type(hint)
    if typing.get_origin(base) is typing.Literal:
        name = "choice"
    else:
        name = getattr(base, "__name__", str(base))
    return name + (" or none" if _optional(hint) else "")


def _coerce(protocol: str, name: str, hint, value, meta) -> Any:
    def bad(problem: str) -> OptionError:
        return OptionError(protocol, name, problem)

    if value is None:
        return None  # an optional option left empty
    base = _base_type(hint)
    choices = meta.get("choices") or _literal_choices(hint)
    if base is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            value = value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {value!r}")
    elif base is int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad(f"must be an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer, got {value!r}")
    elif base is str or typing.get_origin(base) is typing.Literal:
        if not isinstance(value, str):
            value = str(value) if isinstance(value, (int, float)) and base is str else value
        if not isinstance(value, str):
            raise bad(f"must be a string, got {value!r}")
    if choices and value not in choices:
        raise bad(f"must be one of {', '.join(str(c) for c in choices)}, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and value < low or high is not None and value > high:
        span = f"between {low} and {high}" if low is not None and high is not None else \
            (f"at least {low}" if low is not None else f"at most {high}")
        raise bad(f"must be {span}, got {value}")
    return value


# -- the protocols' options -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldOptions(ProtocolOptions):
    """Options of the field protocols (``otp``, ``slalom``): the prime field and the fixed-point encoding."""

    modulus: int = option(2**61 - 1, "the field's prime p (2^8 < p < 2^61)", flag="--modulus")
    repetitions: int = option(2, "Freivalds repetitions k per check (soundness ~20 bits each)", low=1, high=8)
    weight_bits: int = option(24, "signed bits of a quantized weight", low=2, high=32)
    field_backend: Literal["auto", "int8", "float64"] = option(
        "auto", "exact field products: int8 limbs on torch._int_mm, float64 limbs, or measured per shape (auto)")

    def check(self) -> None:
        from ..field import codec

        try:
            codec.check_modulus(self.modulus)
        except UsageError as exc:
            raise self.error("modulus", str(exc).removeprefix("modulus ")) from None
        if 2 ** (self.weight_bits - 1) > codec.headroom(self.modulus):
            raise self.error("weight_bits", f"{self.weight_bits} bits do not fit the modulus {self.modulus}")


@dataclass(frozen=True)
class OtpOptions(FieldOptions):
    protocol: ClassVar[str] = "otp"

    unmask: Literal["enclave", "mask-worker"] = option(
        "enclave", "where the unmask factors f(r, W_t) are computed: in the enclave, or by a mask worker that "
                   "sees only pads", flag="--unmask")


@dataclass(frozen=True)
class SlalomOptions(FieldOptions):
    protocol: ClassVar[str] = "slalom"

    weight_bits: int = option(16, "signed bits of a quantized weight", low=2, high=32)
    precompute: int = option(8, "unmask factors precomputed (sealed) per refill", low=1)
    store_dir: str | None = option(None, "directory of the sealed unmask factors (default: in memory)")


@dataclass(frozen=True)
class SharesOptions(FieldOptions):
    protocol: ClassVar[str] = "shares"

    weight_bits: int = option(32, "signed bits of a weight's fixed-point share encoding", low=2, high=32)
    update: Literal["auto", "enclave"] = option(
        "auto", "who applies the optimizer step: auto (S0 and S1 on the weight shares when the optimizer is plain "
                "SGD, exactly; otherwise the enclave) or enclave (reconstruct, step, re-share)")


@dataclass(frozen=True)
class TempoOptions(ProtocolOptions):
    protocol: ClassVar[str] = "tempo"

    fuse_activations: bool = option(False, "Linear/Conv + activation (+ max-pool) as one module; the product is "
                                           "checked, the activation runs in the enclave",
                                    flag="--fuse-activations")
    rotate_every: int = option(100, "rotate weight keys every N steps", low=1, flag="--rotate-every")
    workers: int = option(1, "main workers the output columns are split across", low=1, flag="--workers")
    check_vectors: int = option(2, "Freivalds check vectors per result", low=1)
    scale_range: int = option(4, "power-of-two scales drawn from 2^[-e, e]", low=0, high=30)
    update: Literal["auto", "worker", "enclave"] = option(
        "auto", "who applies the optimizer step: the worker on the obfuscated weights (SGD), the enclave, "
                "or auto (worker when the optimizer is linear in the gradient)")
