"""The `storage_commitment:` section: when the router tells a modality an instance is safe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from router.config.base import Strict
from router.config.fields import Seconds


class StorageCommitment(Strict):
    """Storage Commitment Push Model: which instances the router commits, and how long it tries.

    Only callers with a `commitment_port` may ask; an instance is committed once every
    durable action of its rule is done (stored with fsync, delivered to every forward
    destination), never merely because it sits in the spool. With `relayed`, each DICOM
    destination marked `commitment: true` that got it must also have committed it.
    """

    answer: Literal["delivered", "relayed"] = Field(
        "delivered",
        description="delivered: commit an instance once every forward destination has it; "
        "relayed: also ask each DICOM destination with commitment: true for its own commitment "
        "(N-ACTION) and commit only what every one of them committed",
    )
    timeout: Seconds = Field(
        4 * 3600.0,
        gt=0,
        description="a duration: instances still not delivered this long after the request "
        "are reported as failed (the modality keeps its copy)",
    )
