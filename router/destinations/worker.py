"""Delivery: the forwarder process, its per-destination workers, and the SCP's seam to them.

pynetdicom's network layer is CPU-bound and receive and send would compete for one GIL,
so queued forwards are sent by a separate process (a fork of the thread-free fork
server, `router.process.forkserver`: it shares nothing but the spool). It reads due deliveries from
the spool's SQLite queue; the daemon sends it each new config after a reload and
restarts it if it dies. A destination gets `associations` worker threads, each keeping
one association open while there is work and closing it after `idle_timeout`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from router.actions.pipeline import Received
from router.config.model import DicomDestination, StowDestination
from router.destinations import dicom as forward
from router.destinations.dicom import PermanentError, Sender, TransientError, Unreachable
from router.destinations.syncpool import SyncPool
from router.dicom.status import hex_code
from router.errors import ActionError, OutOfResources
from router.observe import logs, metrics
from router.process import forkserver
from router.rules.ruleset import LoadedConfig, Shipped, load_shipped
from router.spool.database import Delivery, Instance, Spool

log = logging.getLogger("router.forward")

BATCH = 16
IDLE_POLL = 0.05  # seconds between queue polls when there is nothing due
PRUNE_AFTER = 30 * 86400  # delivered rows are kept this long for `trace`


class DestinationWorkers:
    """The worker threads of one destination and the state they share."""

    def __init__(
        self,
        name: str,
        dest: DicomDestination | StowDestination,
        calling_ae: str,
        spool: Spool,
        resolve: Callable[[str], Path] = Path,
    ) -> None:
        self.name = name
        self.dest = dest
        self.calling_ae = calling_ae
        self.spool = spool
        self.resolve = resolve
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._blocked_until = 0.0
        self._failures = 0
        metrics.destination_started(name)
        self._threads = [
            threading.Thread(target=self._work, name=f"forward-{name}-{i}", daemon=True)
            for i in range(
                dest.associations if isinstance(dest, DicomDestination) else dest.connections
            )
        ]

    def start(self) -> None:
        """Start the workers."""
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        """Let each worker finish the instance in hand, then stop (bounded)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _claim(self) -> list[Delivery]:
        with self._lock:
            batch = self.spool.due(self.name, BATCH, exclude=sorted(self._inflight))
            self._inflight.update(d.id for d in batch)
        return batch

    def _release(self, batch: Sequence[Delivery]) -> None:
        with self._lock:
            self._inflight.difference_update(d.id for d in batch)

    def _work(self) -> None:
        assert isinstance(self.dest, DicomDestination)  # StowWorkers has its own loop
        work = self.spool.root / "work"
        sender = Sender(self.name, self.dest, self.calling_ae, resolve=self.resolve, scratch=work)
        try:
            while not self._stop.is_set():
                wait = self._blocked_until - time.time()
                if wait > 0:
                    self._stop.wait(min(wait, 1.0))
                    continue
                batch = self._claim()
                if not batch:
                    if (
                        sender.assoc
                        and time.monotonic() - sender.last_used > self.dest.idle_timeout
                    ):
                        sender.close()
                    self._stop.wait(IDLE_POLL)
                    continue
                try:
                    self._run_batch(sender, batch)
                except Exception:  # a bug must not kill the worker: log, pause, go on
                    log.exception("forwarding to %s failed unexpectedly", self.name)
                    sender.close()
                    self._stop.wait(1.0)
                finally:
                    self._release(batch)
        finally:
            sender.close()

    def _run_batch(self, sender: Sender, batch: list[Delivery]) -> None:
        for i, delivery in enumerate(batch):
            if self._stop.is_set():
                return
            try:
                self._deliver(sender, delivery)
            except Unreachable as exc:
                self._postpone(batch[i:], str(exc))
                return

    def _postpone(self, rest: list[Delivery], error: str) -> None:
        """The destination is unreachable: these wait for it, their attempts not counted."""
        until = self._block(error)
        for d in rest:
            self.spool.retry_later(d.id, max(d.next_attempt_at, until), None, error, count=False)

    def _deliver(self, sender: Sender, d: Delivery) -> None:
        if not d.path.exists():
            self._outcome(d, "dead", None, "spooled file is missing")
            return
        took = metrics.timer()
        try:
            sent = sender.send(d.path, d.sop_class_uid, d.transfer_syntax)
            metrics.delivery_sent(self.name, d.path, took())
        except TransientError as exc:
            self._retry(d, exc.status, str(exc))
            return
        except PermanentError as exc:
            self._outcome(d, "dead", exc.status, str(exc))
            return
        self._failures = 0
        verdict = forward.policy(sent.status, dict(self.dest.on_status))
        error = sent.comment or f"status {hex_code(sent.status)}"
        if verdict == "delivered":
            self._outcome(d, "delivered", sent.status, None)
        elif verdict == "dead_letter":
            self._outcome(d, "dead", sent.status, error)
        else:
            self._retry(d, sent.status, error)

    def _retry(self, d: Delivery, status: int | None, error: str) -> None:
        attempts = d.attempts + 1
        if attempts >= self.dest.retry.max_attempts:
            self._outcome(d, "dead", status, f"gave up after {attempts} attempts: {error}")
            return
        delay = forward.backoff(attempts, self.dest.retry)
        self.spool.retry_later(d.id, time.time() + delay, status, error)
        metrics.delivery_retry(self.name)
        self._log(d, "retry", status, f"{error}; attempt {attempts}, next in {delay:.1f} s")

    def _outcome(self, d: Delivery, state: str, status: int | None, error: str | None) -> None:
        if state == "delivered":
            self.spool.delivered(d.id, status or 0)
        else:
            self.spool.dead(d.id, status, error or "dead letter")
        metrics.delivery_done(self.name, "delivered" if state == "delivered" else "dead_letter")
        self._log(d, state, status, error)

    def _block(self, error: str) -> float:
        """The destination is unreachable: back off as a whole; attempts are not counted."""
        self._failures += 1
        metrics.destination_unreachable(self.name)
        delay = forward.backoff(self._failures, self.dest.retry)
        with self._lock:
            self._blocked_until = max(self._blocked_until, time.time() + delay)
        log.warning(
            "destination %s unreachable (%s): next try in %.1f s",
            self.name,
            error,
            delay,
            extra={"event": "unreachable", "destination": self.name},
        )
        return self._blocked_until

    def _log(self, d: Delivery, state: str, status: int | None, error: str | None) -> None:
        log.info(
            "delivery %s to %s: %s status=%s%s",
            d.sop_instance_uid,
            self.name,
            state,
            hex_code(status),
            f" ({error})" if error else "",
            extra={
                "event": "delivery",
                "destination": self.name,
                "state": state,
                "sop_instance_uid": d.sop_instance_uid,
                "status": status,
                "error": error,
            },
        )


class Forwarder:
    """All destinations' workers in the forwarder process; `apply()` follows reloads."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.workers: dict[str, DestinationWorkers] = {}

    def apply(self, loaded: LoadedConfig) -> None:
        """Start, restart or stop destinations so they match `loaded`."""
        calling = loaded.config.listen.ae_title
        wanted = {
            name: dest
            for name, dest in loaded.config.destinations.items()
            if isinstance(dest, DicomDestination | StowDestination)
        }
        for name in list(self.workers):
            current = self.workers[name]
            if wanted.get(name) != current.dest or current.calling_ae != calling:
                current.stop(timeout=60)
                del self.workers[name]
                if name not in wanted:
                    log.info("destination %s removed: its queue waits until it is back", name)
        for name, dest in wanted.items():
            if name not in self.workers:
                self.workers[name] = _workers(name, dest, loaded, self.spool)
                self.workers[name].start()

    def stop(self, timeout: float) -> None:
        """Stop every destination, each finishing the instance in hand."""
        for workers in self.workers.values():
            workers._stop.set()
        for workers in self.workers.values():
            workers.stop(timeout)


def _workers(
    name: str, dest: DicomDestination | StowDestination, loaded: LoadedConfig, spool: Spool
) -> DestinationWorkers:
    if isinstance(dest, StowDestination):
        from router.destinations.stow_worker import StowWorkers  # it builds on this module

        return StowWorkers(name, dest, loaded.config.listen.ae_title, loaded.base_dir, spool)
    return DestinationWorkers(name, dest, loaded.config.listen.ae_title, spool, loaded.resolve)


def forwarder_main(
    spool_root: str,
    config: Shipped,
    conn: Connection,
    log_format: str,
    debug: bool,
    metrics_folder: str | None,
) -> None:
    """Entry point of the forwarder process."""
    from router.receive.scp import configure_pynetdicom

    forkserver.name_process("dr-forwarder")
    logs.setup(log_format, debug)
    metrics.init_process(metrics_folder)
    configure_pynetdicom(Path(spool_root) / "incoming")
    stop = threading.Event()
    # SIGTERM reaches the whole cgroup under systemd: finish the instance in hand, exit.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parent = os.getppid()
    # Enqueues must survive a power cut (the daemon commits them with FULL sync); a lost
    # "delivered" mark only means one more send (at-least-once), so no fsync per delivery.
    spool = Spool(Path(spool_root), synchronous="NORMAL")
    forwarder = Forwarder(spool)
    forwarder.apply(load_shipped(config))
    last_prune = 0.0
    while not stop.is_set() and os.getppid() == parent:
        try:
            message: tuple[Any, ...] = conn.recv() if conn.poll(0.2) else ("idle",)
        except (EOFError, OSError):
            break  # the daemon is gone
        if message[0] == "stop":
            break
        if message[0] == "config":
            forwarder.apply(load_shipped(message[1]))
        if time.time() - last_prune > 3600:
            spool.prune(time.time() - PRUNE_AFTER)
            last_prune = time.time()
    forwarder.stop(timeout=15)


class ForwarderProcess:
    """The daemon's handle on the forwarder process."""

    def __init__(self, spool_root: Path, log_format: str, debug: bool) -> None:
        self._ctx = forkserver.children()  # a fork of the fork server, as the workers are
        self._spool_root = spool_root
        self._log_format = log_format
        self._debug = debug
        self._proc: Any = None
        self._conn: Connection | None = None
        self._config: Shipped | None = None

    def start(self, loaded: LoadedConfig) -> None:
        """Spawn the process with the current config."""
        self._config = loaded.shipped()
        parent_end, child_end = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=forwarder_main,
            name="dicom-router-forwarder",
            args=(
                str(self._spool_root),
                self._config,
                child_end,
                self._log_format,
                self._debug,
                metrics.shared_folder(),
            ),
        )
        forkserver.start_fork_server()
        self._proc.start()
        child_end.close()
        self._conn = parent_end

    def update(self, loaded: LoadedConfig) -> None:
        """Hand a reloaded config to the process."""
        self._config = loaded.shipped()
        try:
            if self._conn is not None:
                self._conn.send(("config", self._config))
        except OSError:
            pass  # dead: `check()` restarts it with this config

    def check(self) -> None:
        """Restart the process if it died."""
        if self._proc is not None and not self._proc.is_alive() and self._config:
            log.error("forwarder process exited (code %s): restarting", self._proc.exitcode)
            metrics.process_dead(self._proc.pid)
            self.start(load_shipped(self._config))

    def stop(self, timeout: float) -> None:
        """Ask the process to finish the instances in hand and exit (bounded)."""
        if self._proc is None:
            return
        try:
            if self._conn is not None:
                self._conn.send(("stop",))
        except OSError:
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc = None


class SpoolForwarding:
    """The Pipeline's seam: queued forwards go to the spool, sync ones out at once."""

    def __init__(self, spool: Spool, current: Any) -> None:
        self.spool = spool
        self._current = current
        self._sync = SyncPool(spool.root / "work")

    def enqueue(
        self, file: Path, destinations: Sequence[str], received: Received, identity: Dataset
    ) -> None:
        """Durably queue `file` for each destination."""
        self.spool.enqueue(
            file,
            destinations,
            Instance(
                sop_instance_uid=received.sop_instance_uid,
                sop_class_uid=received.sop_class_uid,
                transfer_syntax=_file_ts(identity, received.transfer_syntax),
                study_uid=str(identity.get("StudyInstanceUID", "")),
                series_uid=str(identity.get("SeriesInstanceUID", "")),
                calling_ae=received.calling_ae,
            ),
        )

    def send_now(self, destination: str, file: Path, identity: Dataset) -> tuple[int, str | None]:
        """Send and return the destination's status; unreachable is 0xA700."""
        loaded: LoadedConfig = self._current()
        dest = loaded.config.destinations[destination]
        assert isinstance(dest, DicomDestination)
        meta = identity.file_meta  # the header the pipeline read from this very file
        try:
            sent = self._sync.send(
                destination,
                dest,
                loaded.config.listen.ae_title,
                loaded.resolve,
                (file, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)),
            )
        except (Unreachable, TransientError) as exc:
            raise OutOfResources(f"{destination}: {exc}") from exc
        except PermanentError as exc:
            raise ActionError(f"{destination}: {exc}", status=0x0122) from exc
        return sent.status, sent.comment

    def close(self) -> None:
        """Release sync forwarding's open associations (at shutdown)."""
        self._sync.close()


def _file_ts(identity: Dataset, fallback: str) -> str:
    meta = getattr(identity, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else fallback
