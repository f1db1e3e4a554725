"""What crosses to each worker role is of the kinds the protocol declares (``transcript_kinds``), every
kind is from the transcript format's list (DESIGN.md), and every declared kind is used."""

from __future__ import annotations

import pytest

from .harness import REGISTRY, batch, session, step, tiny_model, variants

KINDS = {"masked", "public", "obfuscated", "pad", "share", "clear"}


def _kinds_seen(protocol: str, options: dict) -> dict[str, set[str]]:
    """The kinds each worker role received in two steps (or batches)."""
    s, wrapped, optimizer = session(protocol, model=tiny_model(), lr=0.01, transcript=True, **options)
    try:
        for index in range(2):
            step(protocol, wrapped, optimizer, *batch(index))
        return {role: {m["kind"] for m in transcript.meta} for role, transcript in s.boundary.transcripts.items()}
    finally:
        s.close()


@pytest.mark.parametrize("protocol,options", variants())
def test_transcript_kinds_are_as_declared(protocol, options):
    declared = {role: set(kinds) for role, kinds in REGISTRY[protocol].transcript_kinds.items()}
    assert all(kinds <= KINDS for kinds in declared.values())
    seen = _kinds_seen(protocol, options)
    for role, kinds in seen.items():
        assert role in declared, f"role {role!r} got messages but the protocol declares none for it"
        assert kinds <= declared[role], f"{role}: undeclared kinds {kinds - declared[role]}"
    if not declared:
        assert not seen, "a protocol that declares no roles sends nothing"
    elif REGISTRY[protocol].offloads_layers or seen:
        for role in REGISTRY[protocol].adversary_roles:  # the roles every configuration uses
            assert seen.get(role), f"the {role} worker got nothing"


@pytest.mark.parametrize("protocol", sorted(REGISTRY))
def test_every_declared_kind_is_used(protocol):
    """Over the protocol's configurations (defaults and each choice option), the declaration is exact."""
    union: dict[str, set[str]] = {}
    for param in variants():
        name, options = param.values
        if name == protocol:
            for role, kinds in _kinds_seen(protocol, options).items():
                union.setdefault(role, set()).update(kinds)
    assert union == {role: set(kinds) for role, kinds in REGISTRY[protocol].transcript_kinds.items()}
