"""C-STORE status codes: which class each belongs to, and which an action may answer.

The one place these domain rules live (PS3.4 B.2.3, PS3.7 Annex C); the rule file's
validators, the pipeline and the forwarding policy all ask here.
"""

from __future__ import annotations

# The failure codes a Storage SCP may answer, so a `reject` may use.
GENERAL_FAILURES = frozenset({0x0112, 0x0117, 0x0122, 0x0124, 0x0210, 0x0211, 0x0212})
FAILURE_RANGES = ((0xA700, 0xA7FF), (0xA900, 0xA9FF), (0xC000, 0xCFFF))
# The C-STORE warnings: Coercion of Data Elements, Elements Discarded, Data Set does not
# match SOP Class.
WARNINGS = frozenset({0xB000, 0xB006, 0xB007})
# Failures that mean "this instance will never be accepted as it is" (design §7).
PERMANENT = frozenset({0x0112, 0x0117, 0x0122, 0x0124})
PERMANENT_RANGES = ((0xA900, 0xA9FF),)


def is_failure(code: int) -> bool:
    """True for the C-STORE failure statuses a `reject` may answer."""
    return code in GENERAL_FAILURES or any(lo <= code <= hi for lo, hi in FAILURE_RANGES)


def category(code: int) -> str:
    """success, warning or failure, per PS3.7 Annex C."""
    if code == 0x0000:
        return "success"
    if is_warning(code):
        return "warning"
    return "failure"


def is_warning(code: int) -> bool:
    """PS3.7 Annex C warning statuses (any service)."""
    return code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF


def is_permanent(code: int) -> bool:
    """A failure that retrying cannot cure: straight to the dead letters by default."""
    return code in PERMANENT or any(lo <= code <= hi for lo, hi in PERMANENT_RANGES)


def hex_code(code: int | None) -> str:
    """A status as it is written everywhere: 0x0124 (or - for none)."""
    return "-" if code is None else f"0x{code:04X}"
