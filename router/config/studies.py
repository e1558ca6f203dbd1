"""The `studies:` section: when a collected series or study counts as complete."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from router.config.base import Strict
from router.config.fields import Seconds

Level = Literal["series", "study"]
Late = Literal["send", "resend", "hold"]


class Studies(Strict):
    """How `collect:` forwards and `notify:` actions decide a series or study is complete.

    DICOM has no end-of-study signal: a unit is complete after a quiet time from its last
    instance received by any worker, when its association is released (`on_release`), or
    after `max_wait` from its first.
    """

    quiet: Seconds = Field(
        60.0,
        gt=0,
        description="a duration: a series/study is complete this long after its last instance",
    )
    on_release: bool = Field(
        False,
        description="true: also complete what an association sent when the sender releases it",
    )
    max_wait: Seconds = Field(
        7200.0,
        gt=0,
        description="a duration: still receiving this long after the first instance, the "
        "unit is completed anyway (reason max_wait, logged)",
    )
    late: Late = Field(
        "send",
        description="an instance of a unit already complete: send (it alone), resend (the "
        "whole unit again), hold (kept in the spool, shown by trace and studies list)",
    )
