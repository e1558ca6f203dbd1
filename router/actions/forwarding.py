"""The pipeline's seam to delivery: queued forwards go to the spool, sync ones out at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from router.actions.pipeline import Received
from router.config.destinations import DicomDestination
from router.destinations.syncpool import SyncPool
from router.dicom.status import SOP_CLASS_NOT_SUPPORTED
from router.errors import (
    ActionError,
    OutOfResources,
    PermanentError,
    TransientError,
    Unreachable,
)
from router.rules.ruleset import LoadedConfig
from router.spool.database import Spool
from router.spool.queue import Instance


class SpoolForwarding:
    """The Pipeline's seam: queued forwards go to the spool, sync ones out at once."""

    def __init__(self, spool: Spool, current: Callable[[], LoadedConfig]) -> None:
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


def _file_ts(identity: Dataset, fallback: str) -> str:
    meta = getattr(identity, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else fallback
