"""Shared fixtures: an isolated key store, a clear-offload test protocol, a CLI runner."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from blindtrain.boundary import Request, Sent, Tag
from blindtrain.protocols import PROTOCOLS, Protocol, ProtocolInfo


class ClearOffload(Protocol):
    """Test protocol: every bilinear op sent to the worker in the clear.

    It exercises the layer glue, the boundary and the transports without any
    protocol math, so their tests need no real protocol.
    """

    info = ProtocolInfo(name="clear-offload", source="tests", trains=True, private="nothing",
                        integrity="none", leaks="everything", summary="test protocol")

    def bilinear(self, site, op, fn, a, b, *, roles, params):
        request = Request("bilinear", {"A": Sent(a, "clear"), "B": Sent(b, "clear")},
                          Tag(self.runtime.step, site.name, op), params={"fn": fn, **params})
        return self.runtime.call(request).result


@pytest.fixture(autouse=True)
def isolated_keystore(tmp_path, monkeypatch):
    """Every test seals under its own key file, never the user's."""
    path = tmp_path / "keystore" / "sealing.key"
    monkeypatch.setenv("BLINDTRAIN_KEYSTORE", str(path))
    return path


@pytest.fixture
def clear_protocol():
    PROTOCOLS[ClearOffload.info.name] = ClearOffload
    yield ClearOffload.info.name
    PROTOCOLS.pop(ClearOffload.info.name, None)


@pytest.fixture
def cli():
    from blindtrain.cli import main

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
