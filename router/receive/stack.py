"""One process's receive stack, built and drained the same way wherever it runs.

The stack is pynetdicom set up for the spool, the decision journal, the seam to the
spool's queue, the pipeline and the listening SCP. The main process runs one with
`workers: 1`; otherwise each receiving worker runs its own (`router.process.workers`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from router.actions.forwarding import SpoolForwarding
from router.actions.pipeline import Pipeline
from router.net.admission import Budget
from router.net.setup import configure_pynetdicom
from router.net.tls import tls_context
from router.receive.commitment import CommitmentSCP
from router.receive.relay_report import RelayReports
from router.receive.scp import StorageSCP
from router.rules.ruleset import LoadedConfig
from router.spool.database import Spool
from router.spool.journal import Journal

log = logging.getLogger("router.daemon")

# After SIGTERM, in-flight associations get DRAIN_SECONDS, then are aborted and get
# ABORT_SECONDS to wind down. The unit's TimeoutStopSec (45 s) must cover both, and the
# forwarder's stop after them.
DRAIN_SECONDS = 10.0
ABORT_SECONDS = 5.0


class ReceiveStack:
    """The SCP, pipeline, journal and forwarding seam of one receiving process.

    `current` gives the rules in force; it is read for every association and C-STORE.
    """

    def __init__(
        self,
        spool: Spool,
        current: Callable[[], LoadedConfig],
        *,
        port: int | None = None,
        budget: Budget | None = None,
    ) -> None:
        """Build the stack and bind its port; `port` is one the main process reserved
        with SO_REUSEPORT for its workers, `budget` their shared association count."""
        # Received on the spool's filesystem, a file is linked into place, never copied.
        configure_pynetdicom(spool.root / "incoming")
        loaded = current()
        listen = loaded.config.listen
        if port is not None:
            listen = listen.model_copy(update={"port": port})
        tls = tls_context(listen.tls, loaded.resolve) if listen.tls else None
        self.journal = Journal(spool)
        self.journal.start()
        self.forwarding = SpoolForwarding(spool, current)
        self.pipeline = Pipeline(current, self.forwarding, spool.root / "work", self.journal)
        try:
            self.scp = StorageSCP(
                listen,
                self.pipeline,
                lambda: current().config,
                tls,
                self.journal,
                reuse_port=port is not None,
                budget=budget,
                on_release=self.forwarding.released,
                commitment=CommitmentSCP(spool, lambda: current().config),
                relay_reports=RelayReports(spool, lambda: current().config),
            )
        except BaseException:
            self._close()
            raise

    @property
    def port(self) -> int:
        """The port the SCP listens on (port 0 resolved)."""
        return self.scp.port

    def start(self) -> None:
        """Start accepting associations."""
        self.scp.start()

    def drain(self) -> None:
        """Stop accepting, let in-flight associations end (bounded), then close the rest.

        Associations still open after DRAIN_SECONDS are aborted; then the pipeline's
        threads end, sync forwarding's associations close and the journal is written.
        """
        self.scp.stop_accepting()
        if not self.scp.drain(DRAIN_SECONDS):
            log.warning("associations still open after %.0f s: aborting them", DRAIN_SECONDS)
            self.scp.abort_all()
            self.scp.drain(ABORT_SECONDS)
        self._close()

    def _close(self) -> None:
        self.pipeline.close()
        self.forwarding.close()  # sync forwarding's open associations
        self.journal.stop()
