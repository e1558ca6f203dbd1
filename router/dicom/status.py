"""C-STORE status codes: their names, which class each belongs to, which an action may answer.

The one place these domain rules live (PS3.4 B.2.3, PS3.7 Annex C); the rule file's
validators, the rule engine, the pipeline and the forwarding policy all ask here.
"""

from __future__ import annotations

from collections.abc import Iterable

# --- the statuses the router answers or reads by name ------------------------------------

SUCCESS = 0x0000
# PS3.7 C.4.2: Processing failure, a STOW-RS FailedSOPSequence item without a FailureReason.
PROCESSING_FAILURE = 0x0110
# Refused: SOP Class not supported (a sync destination accepts no context for it).
SOP_CLASS_NOT_SUPPORTED = 0x0122
# Refused: Not authorized (the usual `reject`).
NOT_AUTHORIZED = 0x0124
# Refused: Out of Resources (spool below spool_min_free, a write failed, a sync
# destination unreachable): the sender will usually retry later.
OUT_OF_RESOURCES = 0xA700
# Error: Data Set does not match SOP Class (the dataset's SOP Class UID is not the request's).
SOP_CLASS_MISMATCH = 0xA900
# Error: Cannot understand, with the router's own sub-codes in the 0xCxxx range:
CANNOT_UNDERSTAND = 0xC000
CANNOT_PARSE = 0xC210  # a rule needs tags and the dataset cannot be parsed
INTERNAL_ERROR = 0xC211  # a bug: logged, and the daemon serves on
INFLATE_LIMIT = 0xC212  # a deflated dataset inflates past the router's bound
# Warnings: Coercion of Data Elements, Elements Discarded, Data Set does not match SOP Class.
COERCION = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATASET_MISMATCH = 0xB007

# Statuses the router itself answers whatever the rule file says (router.actions.pipeline).
BUILTIN_STATUSES = (
    SUCCESS,
    SOP_CLASS_NOT_SUPPORTED,
    OUT_OF_RESOURCES,
    SOP_CLASS_MISMATCH,
    CANNOT_PARSE,
    INTERNAL_ERROR,
)

# --- classes of codes --------------------------------------------------------------------

# The failure codes a Storage SCP may answer, so a `reject` may use.
GENERAL_FAILURES = frozenset(
    {0x0112, 0x0117, SOP_CLASS_NOT_SUPPORTED, NOT_AUTHORIZED, 0x0210, 0x0211, 0x0212}
)
FAILURE_RANGES = ((0xA700, 0xA7FF), (0xA900, 0xA9FF), (0xC000, 0xCFFF))
# The C-STORE warnings a `warn` may answer.
WARNINGS = frozenset({COERCION, ELEMENTS_DISCARDED, DATASET_MISMATCH})
# PS3.7 Annex C warnings of any service: Attribute list error, Attribute value out of
# range, and the 0xBxxx range.
GENERAL_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})
WARNING_RANGE = (0xB000, 0xBFFF)
# Failures that mean "this instance will never be accepted as it is" (design §7).
PERMANENT = frozenset({0x0112, 0x0117, SOP_CLASS_NOT_SUPPORTED, NOT_AUTHORIZED})
PERMANENT_RANGES = ((0xA900, 0xA9FF),)


def is_failure(code: int) -> bool:
    """True for the C-STORE failure statuses a `reject` may answer."""
    return code in GENERAL_FAILURES or any(lo <= code <= hi for lo, hi in FAILURE_RANGES)


def category(code: int) -> str:
    """success, warning or failure, per PS3.7 Annex C."""
    if code == SUCCESS:
        return "success"
    if is_warning(code):
        return "warning"
    return "failure"


def is_warning(code: int) -> bool:
    """PS3.7 Annex C warning statuses (any service)."""
    return code in GENERAL_WARNINGS or WARNING_RANGE[0] <= code <= WARNING_RANGE[1]


def is_permanent(code: int) -> bool:
    """A failure that retrying cannot cure: straight to the dead letters by default."""
    return code in PERMANENT or any(lo <= code <= hi for lo, hi in PERMANENT_RANGES)


def hex_code(code: int | None) -> str:
    """A status as it is written everywhere: 0x0124 (or - for none)."""
    return "-" if code is None else f"0x{code:04X}"


def listing(codes: Iterable[int], ranges: Iterable[tuple[int, int]] = ()) -> str:
    """Codes and ranges as error messages list them: `0x0112, 0x0210-0x0212 or 0xA700-0xA7FF`.

    Three or more consecutive codes are written as one range, so the text follows the
    tables above.
    """
    runs: list[list[int]] = []
    for code in sorted(codes):
        if runs and runs[-1][-1] == code - 1:
            runs[-1].append(code)
        else:
            runs.append([code])
    spans = [(r[0], r[-1]) for r in runs if len(r) >= 3]
    spans += [(c, c) for r in runs if len(r) < 3 for c in r]
    spans = sorted([*spans, *ranges])
    words = [hex_code(lo) if lo == hi else f"{hex_code(lo)}-{hex_code(hi)}" for lo, hi in spans]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


# --- Storage Commitment (PS3.4 Annex J; PS3.7 C.5) ----------------------------------------

# N-ACTION statuses the router answers to a Storage Commitment request.
INVALID_ARGUMENT = 0x0115  # a Transaction UID already in use (Failure Reason 0x0131 in kind)
MISSING_ATTRIBUTE = 0x0120  # no Transaction UID or Referenced SOP Sequence
MISSING_ATTRIBUTE_VALUE = 0x0121  # an item without its SOP Class or Instance UID
NO_SUCH_ACTION = 0x0123  # an Action Type ID other than 1
RESOURCE_LIMITATION = 0x0213  # more items, or open transactions, than the router's limits
# Failure Reasons (0008,1197) of a Failed SOP Sequence item in the N-EVENT-REPORT.
NO_SUCH_OBJECT = 0x0112  # never received
CLASS_INSTANCE_CONFLICT = 0x0119  # received, with another SOP Class
# PROCESSING_FAILURE (0x0110): rejected, dead-lettered, or not done before the timeout.

# N-EVENT-REPORT statuses the router answers to a destination's own Storage Commitment
# report (`answer: relayed`), besides INVALID_ARGUMENT (an unknown Transaction UID),
# PROCESSING_FAILURE and RESOURCE_LIMITATION.
NO_SUCH_EVENT_TYPE = 0x0113  # an Event Type ID other than 1 or 2
INVALID_OBJECT_INSTANCE = 0x0117  # not the well-known instance 1.2.840.10008.1.20.1.1
UNRECOGNIZED_OPERATION = 0x0211  # from a peer that is not a commitment: true destination
# Failure Reasons a destination may report, passed on to the modality as they are (PS3.4
# J.3.2.1.1.1); any other is passed on as PROCESSING_FAILURE.
REFERENCED_CLASS_NOT_SUPPORTED = 0x0122
RELAYED_REASONS = frozenset(
    {
        PROCESSING_FAILURE,
        NO_SUCH_OBJECT,
        CLASS_INSTANCE_CONFLICT,
        REFERENCED_CLASS_NOT_SUPPORTED,
        RESOURCE_LIMITATION,
    }
)
