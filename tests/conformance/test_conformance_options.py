"""Every protocol's typed options: validated in one place, errors naming the parameter as the API spells
it (``Session(...)``) and as the CLI spells it (``--unmask``, ``--option k=v``); the CLI's help and the
``blindtrain protocols`` table come from the dataclasses."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

import blindtrain as bt
from blindtrain.cli import main
from blindtrain.errors import UsageError
from blindtrain.protocols.options import OptionError, ProtocolOptions, describe

from .harness import REGISTRY

SPECS = [pytest.param(name, spec, id=f"{name}-{spec.name}") for name, cls in sorted(REGISTRY.items())
         for spec in describe(cls.Options)]


def _bad_values(spec):
    """Values that must be refused for this option, each with a phrase the error must contain."""
    if spec.choices:
        yield "no-such-choice", "must be one of"
    if spec.type.startswith("int"):
        yield "seven", "must be an integer"
        yield True, "must be an integer"
        if spec.low is not None:
            yield spec.low - 1, "must be"
        if spec.high is not None:
            yield spec.high + 1, "must be"
    if spec.type.startswith("bool"):
        yield "maybe", "true or false"


@pytest.mark.parametrize("protocol", sorted(REGISTRY))
def test_options_are_a_frozen_dataclass_whose_defaults_validate(protocol):
    cls = REGISTRY[protocol].Options
    assert issubclass(cls, ProtocolOptions) and cls.protocol == protocol
    options = cls.parse({})
    assert options.as_dict() == dict(REGISTRY[protocol].options)
    for field in dataclasses.fields(options):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(options, field.name, field.default)
        assert field.metadata.get("help"), f"{protocol} option {field.name} has no help"


@pytest.mark.parametrize("protocol,spec", SPECS)
def test_each_bad_value_is_refused_naming_the_parameter(protocol, spec):
    bad = list(_bad_values(spec))
    for value, phrase in bad:
        with pytest.raises(OptionError) as caught:
            REGISTRY[protocol].Options.parse({spec.name: value})
        message = str(caught.value)
        assert f"option {spec.name} " in message and phrase in message and protocol in message, message
        assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2


@pytest.mark.parametrize("protocol", sorted(REGISTRY))
def test_unknown_options_are_refused_by_the_session(protocol):
    with pytest.raises(UsageError, match=f"protocol '{protocol}' has no option frobnicate"):
        bt.Session(protocol=protocol, device="cpu", frobnicate=1)


def test_strings_of_integers_are_read_and_none_means_the_default():
    options = REGISTRY["tempo"].Options.parse({"rotate_every": "5", "workers": None})
    assert (options.rotate_every, options.workers) == (5, 1)


def test_the_cli_names_the_flag_the_user_typed():
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--protocol", "otp", "--unmask", "cloud", "--steps", "1", "--quiet"])
    assert result.exit_code == 2 and "--unmask: must be one of enclave, mask-worker" in result.output
    result = runner.invoke(main, ["train", "--protocol", "tempo", "--option", "scale_range=99", "--steps", "1",
                                  "--quiet"])
    assert result.exit_code == 2 and "--option scale_range: must be between 0 and 30" in result.output


def test_the_cli_help_and_the_protocols_table_come_from_the_dataclasses():
    runner = CliRunner()
    help_text = " ".join(runner.invoke(main, ["train", "--help"]).output.split())
    table = json.loads(runner.invoke(main, ["protocols", "--json"]).output)
    by_name = {row["name"]: row for row in table}
    assert set(by_name) == set(REGISTRY)
    for name, cls in REGISTRY.items():
        specs = describe(cls.Options)
        assert [row["name"] for row in by_name[name]["options"]] == [spec.name for spec in specs]
        assert by_name[name]["tolerance"] == cls.tolerance
        for spec in specs:
            shown = spec.flag.split("=")[0] if spec.flag.startswith("--option") else spec.flag
            assert (spec.name in help_text) if shown.startswith("--option") else (shown in help_text)
    assert "repetitions (int in [1, 8], default 2)" in help_text
    text = runner.invoke(main, ["protocols"]).output
    assert "--option scale_range" in text and "int in [0, 30], default 4" in text


def test_the_field_options_agree_with_the_field_package():
    """options.py stays import-light (no torch): its field defaults and choices are checked here instead."""
    from blindtrain.field import codec
    from blindtrain.field.engine import BACKENDS
    from blindtrain.protocols.options import FieldOptions

    assert FieldOptions().modulus == codec.DEFAULT_MODULUS
    assert set(FieldOptions.choices("field_backend")) == {"auto", *BACKENDS}
