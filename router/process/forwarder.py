"""The forwarder process: every queued delivery is sent from here, and the daemon's handle on it.

pynetdicom's network layer is CPU-bound and receive and send would compete for one GIL,
so queued forwards are sent by a separate process (a fork of the thread-free fork
server, `router.process.forkserver`: it shares nothing but the spool). The daemon sends it
each new config after a reload and restarts it if it dies (`router.process.children`).
"""

from __future__ import annotations

import logging
import time

from router.net.setup import configure_pynetdicom
from router.observe.fleet.mirror import FleetMirror
from router.process.children import ChildProcess, Launch, Settings, enter
from router.rules.ruleset import load_shipped
from router.spool.database import Spool

log = logging.getLogger("router.forward")

PRUNE_AFTER = 30 * 86400  # delivered rows are kept this long for `trace`


def forwarder_process(settings: Settings) -> ChildProcess[None]:
    """The daemon's handle on the forwarder process (not started)."""
    return ChildProcess(forwarder_main, "dicom-router-forwarder", settings, None, _died)


def _died(_pid: int, code: int | None) -> None:
    log.error("forwarder process exited (code %s): restarting", code)


def forwarder_main(launch: Launch[None]) -> None:
    """Entry point of the forwarder process."""
    orders = enter(launch, "dr-forwarder")
    configure_pynetdicom(launch.settings.spool / "incoming")
    # Enqueues must survive a power cut (the daemon commits them with FULL sync); a lost
    # "delivered" mark only means one more send (at-least-once), so no fsync per delivery.
    spool = Spool(launch.settings.spool, synchronous="NORMAL")
    # Imported in the forwarder only: the sending libraries (httpx for STOW-RS...) would
    # otherwise sit in the main process, the fork server and every receiving worker.
    from router.destinations.registry import Forwarder

    forwarder = Forwarder(spool)
    loaded = load_shipped(launch.config)
    forwarder.apply(loaded)
    mirror = FleetMirror()  # `fleet:`: a thread of this process (router.observe.fleet.mirror)
    mirror.apply(loaded)
    last_prune = 0.0
    for config in orders.configs(every=0.2):
        if config is not None:
            loaded = load_shipped(config)
            forwarder.apply(loaded)
            mirror.apply(loaded)
        if time.time() - last_prune > 3600:
            spool.prune(time.time() - PRUNE_AFTER)
            last_prune = time.time()
    mirror.stop()  # first: at most a couple of seconds, it finishes nothing for anyone
    forwarder.stop(timeout=15)
