"""The queued destination kinds, and the forwarder's workers built from them.

`KINDS` maps a destination's config model to its plugin: the queue-worker class and how it
is described (its threads are the model's `parallel`). A new kind of queued destination is
one entry here (and its worker module), not another `isinstance` branch. Filesystem destinations are
written while the C-STORE is answered and are not queued: they have no entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.config.destinations import (
    DicomDestination,
    QueuedDestination,
    StowDestination,
    WebhookDestination,
)
from router.destinations.commitment import Committer
from router.destinations.dicom_worker import DicomWorkers
from router.destinations.stow_worker import StowWorkers
from router.destinations.sweeper import Sweeper
from router.destinations.webhook import WebhookWorkers
from router.destinations.worker import QueueWorkers
from router.rules.ruleset import LoadedConfig
from router.spool.database import Spool

log = logging.getLogger("router.forward")


@dataclass(frozen=True)
class Kind:
    """One queued destination kind: its workers, their number, a one-line description."""

    workers: Callable[[str, Any, Spool, LoadedConfig, int], QueueWorkers[Any, Any]]
    describe: Callable[[Any], str]


def _describe_dicom(dest: DicomDestination) -> str:
    where = f"DICOM {dest.ae_title}@{dest.host}:{dest.port}"
    if dest.commitment:
        where += " (asked for storage commitment)"
    if dest.tls is None:
        return where
    if not dest.tls.verify:
        return f"{where} TLS (not verified)"
    parts = [f"server name {dest.tls.server_name or dest.host}"]
    parts.append(f"CA {dest.tls.ca_certificates}" if dest.tls.ca_certificates else "system CAs")
    if dest.tls.certificate:
        parts.append("client certificate")
    return f"{where} TLS ({', '.join(parts)})"


def _describe_stow(dest: StowDestination) -> str:
    return dest.describe()


KINDS: Mapping[type, Kind] = {
    DicomDestination: Kind(DicomWorkers, _describe_dicom),
    StowDestination: Kind(StowWorkers, _describe_stow),
    WebhookDestination: Kind(WebhookWorkers, WebhookDestination.describe),
}


def kind_of(dest: object) -> Kind | None:
    """The plugin of a queued destination; None for a destination that is not queued."""
    return KINDS.get(type(dest))


def queued(destinations: Mapping[str, object]) -> dict[str, QueuedDestination]:
    """The destinations of a config that have a delivery queue."""
    return {
        name: dest
        for name, dest in destinations.items()
        if isinstance(dest, QueuedDestination) and type(dest) in KINDS
    }


def build_workers(
    name: str, dest: QueuedDestination, loaded: LoadedConfig, spool: Spool
) -> QueueWorkers[Any, Any]:
    """The (not yet started) workers of queued destination `name`."""
    return KINDS[type(dest)].workers(name, dest, spool, loaded, dest.parallel)


class Forwarder:
    """All destinations' workers in the forwarder process; `apply()` follows reloads."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.workers: dict[str, QueueWorkers[Any, Any]] = {}
        self.sweeper: Sweeper | None = None  # completes collected units: one per daemon
        self.committer: Committer | None = None  # answers storage commitment: one per daemon

    def apply(self, loaded: LoadedConfig) -> None:
        """Start, restart or stop destinations so they match `loaded`."""
        calling = loaded.config.listen.ae_title
        wanted = queued(loaded.config.destinations)
        if self.sweeper is None:
            self.sweeper = Sweeper(self.spool, loaded.config.studies)
            self.sweeper.start()
        else:
            self.sweeper.apply(loaded.config.studies)
        if self.committer is None:
            self.committer = Committer(self.spool, loaded.config, loaded.resolve)
            self.committer.start()
        else:
            self.committer.apply(loaded.config, loaded.resolve)
        for name in list(self.workers):
            current = self.workers[name]
            if wanted.get(name) != current.dest or current.calling_ae != calling:
                current.stop(timeout=60)
                del self.workers[name]
                if name not in wanted:
                    log.info("destination %s removed: its queue waits until it is back", name)
        for name, dest in wanted.items():
            if name in self.workers:
                self.workers[name].config_changed(loaded)
            else:
                self.workers[name] = build_workers(name, dest, loaded, self.spool)
                self.workers[name].start()

    def stop(self, timeout: float) -> None:
        """Stop every destination, each finishing the instance in hand."""
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.committer is not None:
            self.committer.stop()
        for workers in self.workers.values():
            workers.request_stop()
        for workers in self.workers.values():
            workers.stop(timeout)
