"""`mode: sync` keeps its associations open between C-STOREs (router.destinations.syncpool).

The destination is a small pynetdicom SCP written here that counts the associations it
gets and the releases, and can drop an association in the middle of a C-STORE (it shuts
its socket down instead of answering), as a PACS restarting between two sends would.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.peers import LOOPBACK, free_port
from tests.test_forward import Router, dest, one_instance, rule_file, send, wait_until

pytestmark = pytest.mark.interop

SYNC = ["forward: {to: pacs, mode: sync}"]


class CountingSCP:
    """A Storage SCP counting associations, releases and C-STOREs; `drop` lists the
    C-STOREs (1-based, over its lifetime) it answers by cutting the connection, `stall`
    those it answers 4 s late."""

    def __init__(self, drop: set[int] | None = None, stall: set[int] | None = None) -> None:
        self.port = free_port()
        self.drop = drop or set()
        self.stall = stall or set()  # C-STOREs answered only after 4 s
        self.associations = 0
        self.releases = 0
        self.stores: list[str] = []  # SOP Instance UIDs, in arrival order
        self._lock = threading.Lock()
        self.ae = AE(ae_title="PACS")
        for cx in StoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax)
        self.ae.add_supported_context(Verification)
        self.server = self.ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_ESTABLISHED, self._established),
                (evt.EVT_RELEASED, self._released),
                (evt.EVT_C_STORE, self._store),
            ],
        )

    def _established(self, event: Event) -> None:
        with self._lock:
            self.associations += 1

    def _released(self, event: Event) -> None:
        with self._lock:
            self.releases += 1

    def _store(self, event: Event) -> int:
        with self._lock:
            self.stores.append(str(event.request.AffectedSOPInstanceUID))  # type: ignore[union-attr]
            cut = len(self.stores) in self.drop
            slow = len(self.stores) in self.stall
        if slow:
            time.sleep(4)
        if cut:
            sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
            if isinstance(sock, socket.socket):
                sock.shutdown(socket.SHUT_RDWR)
        return 0x0000

    def stop(self) -> None:
        """Stop listening, drop what is open."""
        self.server.shutdown()
        self.ae.shutdown()


@pytest.fixture
def counting() -> Iterator[type[CountingSCP]]:
    """Make CountingSCPs; all are stopped after the test."""
    made: list[CountingSCP] = []

    class Tracked(CountingSCP):
        def __init__(self, drop: set[int] | None = None, stall: set[int] | None = None) -> None:
            super().__init__(drop, stall)
            made.append(self)

    yield Tracked
    for scp in made:
        scp.stop()


def test_sync_forwards_share_one_open_association(
    router: Router, counting: type[CountingSCP], tmp_path: Path
) -> None:
    """Five C-STOREs on one incoming association, then three more on another: the PACS
    sees one association from the router for all eight."""
    pacs = counting()
    files = [one_instance(tmp_path, f"ct{i}.dcm")[0] for i in range(8)]
    d = router(rule_file({"pacs": dest("PACS", pacs.port, idle_timeout="30s")}, SYNC))
    assert send(d, files[:5]) == [0] * 5
    assert send(d, files[5:]) == [0] * 3
    assert len(pacs.stores) == 8
    assert pacs.associations == 1


def test_idle_sync_association_is_released_after_idle_timeout(
    router: Router, counting: type[CountingSCP], tmp_path: Path
) -> None:
    """idle_timeout 1 s: the open association is released about a second after the last
    C-STORE, and the next C-STORE opens a new one."""
    pacs = counting()
    path, _ = one_instance(tmp_path)
    d = router(rule_file({"pacs": dest("PACS", pacs.port, idle_timeout="1s")}, SYNC))
    assert send(d, [path]) == [0]
    start = time.monotonic()
    wait_until("the release", lambda: pacs.releases == 1, timeout=5)
    assert time.monotonic() - start >= 0.5
    assert send(d, [path]) == [0]
    assert pacs.associations == 2


def test_a_broken_open_association_is_retried_once_on_a_fresh_one(
    router: Router, counting: type[CountingSCP], tmp_path: Path
) -> None:
    """The PACS cuts the open association during the second C-STORE: the router sends it
    again on a new association, and the sender gets 0x0000, not 0xA700."""
    pacs = counting(drop={2})
    first, _ = one_instance(tmp_path, "a.dcm")
    second, uid = one_instance(tmp_path, "b.dcm")
    d = router(rule_file({"pacs": dest("PACS", pacs.port, dimse_timeout="5s")}, SYNC))
    assert send(d, [first]) == [0]
    assert send(d, [second]) == [0]
    assert pacs.stores[1:] == [uid, uid]
    assert pacs.associations == 2
    assert "once more on a new one" in d.log()


def test_a_fresh_association_that_breaks_answers_0xa700(
    router: Router, counting: type[CountingSCP], tmp_path: Path
) -> None:
    """The very first C-STORE, on a new association, is cut: no second try, 0xA700."""
    pacs = counting(drop={1})
    path, _ = one_instance(tmp_path)
    d = router(rule_file({"pacs": dest("PACS", pacs.port, dimse_timeout="5s")}, SYNC))
    assert send(d, [path]) == [0xA700]
    assert len(pacs.stores) == 1


@pytest.mark.alone
def test_a_silent_destination_is_not_tried_twice(
    router: Router, counting: type[CountingSCP], tmp_path: Path
) -> None:
    """On an open association the PACS does not answer within dimse_timeout (2 s): the
    sender gets 0xA700 after one wait, and the C-STORE is not sent again."""
    pacs = counting(stall={2})
    first, _ = one_instance(tmp_path, "a.dcm")
    second, _ = one_instance(tmp_path, "b.dcm")
    d = router(rule_file({"pacs": dest("PACS", pacs.port, dimse_timeout="2s")}, SYNC))
    assert send(d, [first]) == [0]
    start = time.monotonic()
    assert send(d, [second]) == [0xA700]
    assert time.monotonic() - start < 3.5
    time.sleep(2.5)  # the stalled answer comes; a second send would be counted by then
    assert len(pacs.stores) == 2
    assert "once more on a new one" not in d.log()
