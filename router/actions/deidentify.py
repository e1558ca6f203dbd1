"""`deidentify: NAME`: the de-identified copy for the actions after it.

The PS3.15 transform itself is pure (router.dicom.deid); this module runs it through
modify's rewrite, so Pixel Data is copied raw in chunks and memory stays flat, and
withholds an image that may carry burned-in text (burned_in: refuse).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from router.actions.modify import rewrite
from router.dicom.deid import Context, Profile, deidentify, may_have_burned_in
from router.observe import metrics

__all__ = ["apply", "may_have_burned_in", "withhold"]

log = logging.getLogger("router.deidentify")


class _Sender(Protocol):
    @property
    def calling_ae(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...


def apply(source: Path, profile: Profile, target: Path) -> None:
    """Write the de-identified copy of `source` to `target` (pixel data copied raw)."""
    context: list[Context] = []

    def edit(ds: Dataset, side: bool | None) -> bool:
        if side is not False:  # the header (or the whole dataset) comes first
            context.append(Context.of(profile, ds))
        return deidentify(ds, context[0], markers=side is not False)

    rewrite(source, target, edit)


def withhold(profile: str, received: _Sender) -> str:
    """Log and count one withheld instance; the comment `trace` shows."""
    metrics.deid_withheld(profile)
    log.warning(
        "deidentify %s: %s from %s withheld: it has or may have burned-in annotation",
        profile,
        received.sop_instance_uid,
        received.calling_ae,
        extra={"event": "deid-withheld"},
    )
    return f"withheld by deidentify {profile}: burned-in annotation (the actions after it skipped)"
