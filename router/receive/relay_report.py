"""`answer: relayed`, the listener's side: a destination's own Storage Commitment report
arriving on a new association it opens to the router (as Orthanc and most PACS do).

Only a `commitment: true` destination (its AE title calling from its host) gets the
Storage Commitment context with the SCP role it proposes (role selection: it performs the
class, the router requested it); the report is recorded in the spool database by
`router.destinations.relay.take_report` before it is answered, and the forwarder, which
watches for recorded reports, decides the modality's transaction at once. Statuses: 0x0211
from a peer that is no commitment destination, 0x0115 for a Transaction UID the router
did not send that destination, 0x0113 an Event Type other than 1 or 2, 0x0117 not the
well-known instance, 0x0213 more than 5,000 items; a dataset over netlayer's 1 MiB bound
aborts the association, as an N-ACTION's does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event
from pynetdicom.presentation import build_context

from router.config.model import Config
from router.destinations.relay import destination_of, take_report
from router.spool.database import Spool


def grant_scp_role(assoc: Any, sop_class: str) -> None:
    """In EVT_REQUESTED: accept the roles the peer proposes for `sop_class`, on this
    association only (the AE's own context keeps the default roles)."""
    contexts = []
    for context in assoc.acceptor.supported_contexts:
        if context.abstract_syntax == sop_class:
            context = build_context(sop_class, context.transfer_syntax)
            context.scu_role = context.scp_role = True
        contexts.append(context)
    assoc.acceptor.supported_contexts = contexts


class RelayReports:
    """The EVT_N_EVENT_REPORT handler of the listener."""

    def __init__(self, spool: Spool, current: Callable[[], Config]) -> None:
        self._spool = spool
        self._current = current

    def on_report(self, event: Event) -> tuple[Dataset, None]:
        """Record and answer a destination's report; never raises."""
        assoc = event.assoc
        name = destination_of(
            self._current(), assoc.requestor.ae_title.strip(), assoc.requestor.address
        )
        return take_report(self._spool, event, name, "a new association"), None
