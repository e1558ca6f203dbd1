"""The pipeline's seam to delivery: queued forwards go to the spool, sync ones out at once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from router.actions.pipeline import Received
from router.config.destinations import DicomDestination
from router.destinations import sweeper
from router.destinations.syncpool import SyncPool
from router.dicom.status import SOP_CLASS_NOT_SUPPORTED
from router.errors import (
    ActionError,
    OutOfResources,
    PermanentError,
    TransientError,
    Unreachable,
)
from router.observe import metrics
from router.rules.ruleset import LoadedConfig
from router.spool.database import Spool
from router.spool.queue import Instance

log = logging.getLogger("router.studies")


class SpoolForwarding:
    """The Pipeline's seam: queued forwards go to the spool, sync ones out at once."""

    def __init__(self, spool: Spool, current: Callable[[], LoadedConfig]) -> None:
        self.spool = spool
        self._current = current
        self._sync = SyncPool(spool.root / "work")

    def enqueue(
        self,
        file: Path,
        destinations: Sequence[str],
        received: Received,
        identity: Dataset,
        held: Mapping[str, str] | None = None,
        rule: str = "",
    ) -> None:
        """Durably queue `file` for each destination; `held` ones wait for their unit."""
        late = self._current().config.studies.late
        _, late_levels = self.spool.queue.enqueue_held(
            file,
            destinations,
            Instance(
                sop_instance_uid=received.sop_instance_uid,
                sop_class_uid=received.sop_class_uid,
                transfer_syntax=_file_ts(identity, received.transfer_syntax),
                study_uid=str(identity.get("StudyInstanceUID", "")),
                series_uid=str(identity.get("SeriesInstanceUID", "")),
                calling_ae=received.calling_ae,
                series_number=_number(identity, "SeriesNumber"),
                instance_number=_number(identity, "InstanceNumber"),
                rule=rule,
            ),
            held or {},
            late,
        )
        for level in late_levels:
            metrics.late_instance(level, late)
            log.info(
                "%s %s came after its %s was complete: late: %s",
                received.sop_instance_uid,
                received.calling_ae,
                level,
                late,
                extra={"event": "late_instance", "level": level, "policy": late},
            )

    def released(self, seen: set[tuple[str, str]]) -> None:
        """An association that sent collected instances was released: with
        `studies.on_release`, complete the series and studies it sent (never raises)."""
        studies = self._current().config.studies
        if not studies.on_release or not seen:
            return
        try:
            sweeper.released(self.spool, seen, studies)
        except Exception:  # a release must never fail the association's thread
            log.exception("completing the units of a released association failed")

    def send_now(self, destination: str, file: Path, identity: Dataset) -> tuple[int, str | None]:
        """Send and return the destination's status; unreachable is 0xA700."""
        loaded = self._current()
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
            raise ActionError(f"{destination}: {exc}", status=SOP_CLASS_NOT_SUPPORTED) from exc
        return sent.status, sent.comment

    def close(self) -> None:
        """Release sync forwarding's open associations (at shutdown)."""
        self._sync.close()


def _number(identity: Dataset, keyword: str) -> int | None:
    """An IS element's value, None when absent or not a number (it only orders a unit)."""
    try:
        value = identity.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _file_ts(identity: Dataset, fallback: str) -> str:
    meta = getattr(identity, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else fallback
