"""A rule's actions run in order (design §5): each acts on the file as the actions
before it left it, queued forwards are committed only once every action has succeeded,
and a sync forward's failure ends the run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian

from tests.peers import ScriptedSCP
from tests.test_forward import (
    Router,
    _decode,
    deliveries,
    dest,
    one_instance,
    rule_file,
    send,
    wait_until,
)

pytestmark = pytest.mark.interop


def institution(pacs: ScriptedSCP, uid: str) -> str:
    """InstitutionName of the dataset `pacs` received as `uid`."""
    ts, raw = pacs.received[uid]
    return str(_decode(raw, implicit=ts == ImplicitVRLittleEndian).InstitutionName)


def test_a_forward_sends_the_file_as_the_actions_before_it_left_it(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """forward, modify, forward: the first destination gets the received dataset, the
    second the modified one; the sender gets modify's 0xB000."""
    before, after = scripted(ae_title="BEFORE"), scripted(ae_title="AFTER")
    path, uid = one_instance(tmp_path, InstitutionName="AS SENT")
    d = router(
        rule_file(
            {"before": dest("BEFORE", before.port), "after": dest("AFTER", after.port)},
            [
                "forward: before",
                "modify: {set: {InstitutionName: MODIFIED}}",
                "forward: after",
            ],
        )
    )
    assert send(d, [path]) == [0xB000]
    wait_until("both deliveries", lambda: before.accepted(uid) and after.accepted(uid))
    assert institution(before, uid) == "AS SENT"
    assert institution(after, uid) == "MODIFIED"


def test_a_failed_sync_forward_is_answered_and_nothing_is_queued(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """A queued forward, then a sync forward answered 0xA700: the sender gets 0xA700
    and the queued forward before it was never committed."""
    queued, gate = scripted(ae_title="QUEUED"), scripted(ae_title="GATE", status=0xA700)
    path, uid = one_instance(tmp_path)
    d = router(
        rule_file(
            {"queued": dest("QUEUED", queued.port), "gate": dest("GATE", gate.port)},
            ["forward: queued", "forward: {to: gate, mode: sync}"],
        )
    )
    assert send(d, [path]) == [0xA700]
    assert gate.answered(uid) == [0xA700]
    assert deliveries(d) == []


def test_a_warning_from_a_sync_forward_is_answered_and_the_queued_forwards_go_on(
    router: Router, scripted: Callable[..., ScriptedSCP], tmp_path: Path
) -> None:
    """A sync forward answered 0xB000 (a warning): the sender gets 0xB000 and the queued
    forward after it is delivered."""
    gate, queued = scripted(ae_title="GATE", status=0xB000), scripted(ae_title="QUEUED")
    path, uid = one_instance(tmp_path)
    d = router(
        rule_file(
            {"gate": dest("GATE", gate.port), "queued": dest("QUEUED", queued.port)},
            ["forward: {to: gate, mode: sync}", "forward: queued"],
        )
    )
    assert send(d, [path]) == [0xB000]
    wait_until("the queued delivery", lambda: queued.accepted(uid))
