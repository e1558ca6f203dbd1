"""Forwarding policy, pure parts (design §4 `on_status`, §7; operations.md "Forwarding").

`policy.policy` decides what a destination's answer means for a queued delivery,
`policy.backoff` how long to wait before the next attempt, `forward.contexts_for` which
presentation contexts an association to a destination proposes. No network here.
"""

from __future__ import annotations

import random
from collections.abc import Container, Mapping

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
)
from pynetdicom import status as pyn_status
from pynetdicom.presentation import PresentationContext

from router.config.destinations import DicomDestination, Retry
from router.destinations import dicom as forward
from router.destinations import policy as forward_policy
from router.dicom import status

DELIVERED, RETRY, DEAD = "delivered", "retry", "dead_letter"
UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def on_status(keys: Mapping[object, str]) -> dict[str, str]:
    """`on_status` as the forwarder hands it to policy(): normalised by the config model."""
    dest = DicomDestination(ae_title="PACS", host="127.0.0.1", port=104, on_status=keys)
    return dict(dest.on_status)


# --- defaults: each class ----------------------------------------------------------------


def test_success_is_delivered() -> None:
    """0x0000 from the destination marks the delivery delivered."""
    assert forward_policy.policy(0x0000, {}) == DELIVERED


@pytest.mark.parametrize("code", [0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007, 0xBFFF])
def test_warnings_are_delivered_by_default(code: int) -> None:
    """Every warning status (0x0001, 0x0107, 0x0116, 0xBxxx) counts as delivered by default."""
    assert forward_policy.policy(code, {}) == DELIVERED


@pytest.mark.parametrize("code", [0xA700, 0xA701, 0xA7FF])
def test_out_of_resources_is_retried_by_default(code: int) -> None:
    """0xA7xx (out of resources) is transient: retried (design §7)."""
    assert forward_policy.policy(code, {}) == RETRY


@pytest.mark.parametrize("code", [0x0110, 0x0210, 0x0211, 0x0212, 0x0213, 0xC000, 0xC211, 0xCFFF])
def test_other_failures_are_retried_by_default(code: int) -> None:
    """A failure that is not one of the built-in permanent ones is retried by default."""
    assert forward_policy.policy(code, {}) == RETRY


@pytest.mark.parametrize("code", [0x0112, 0x0117, 0x0122, 0x0124, 0xA900, 0xA950, 0xA9FF])
def test_builtin_permanent_failures_go_to_dead_letters(code: int) -> None:
    """0x0112, 0x0117, 0x0122, 0x0124 and 0xA9xx are permanent: dead letter at once."""
    assert forward_policy.policy(code, {}) == DEAD


@pytest.mark.parametrize("code", [0x0200, 0x0300, 0xD000, 0xFE00])
def test_unknown_codes_are_treated_as_retryable_failures(code: int) -> None:
    """A code outside every PS3.7 class is a failure (never 'delivered'), retried by default."""
    assert forward_policy.policy(code, {}) == RETRY


# --- the class keys ------------------------------------------------------------------------


@pytest.mark.parametrize("verdict", [DELIVERED, RETRY, DEAD])
def test_warning_key_decides_warnings(verdict: str) -> None:
    """`warning: X` applies to every warning status."""
    policy = on_status({"warning": verdict})
    assert forward_policy.policy(0xB007, policy) == verdict
    assert forward_policy.policy(0x0001, policy) == verdict


@pytest.mark.parametrize("verdict", [DELIVERED, RETRY, DEAD])
def test_failure_key_decides_non_permanent_failures(verdict: str) -> None:
    """`failure: X` applies to failures that are not built-in permanent ones."""
    policy = on_status({"failure": verdict})
    assert forward_policy.policy(0xA700, policy) == verdict
    assert forward_policy.policy(0xC000, policy) == verdict


def test_class_keys_do_not_touch_success() -> None:
    """No class key turns 0x0000 into anything but delivered."""
    policy = on_status({"warning": DEAD, "failure": DEAD})
    assert forward_policy.policy(0x0000, policy) == DELIVERED


def test_warning_key_does_not_apply_to_failures() -> None:
    """`warning: dead_letter` leaves failures at their default (retry)."""
    assert forward_policy.policy(0xA700, on_status({"warning": DEAD})) == RETRY


def test_failure_key_does_not_apply_to_warnings() -> None:
    """`failure: dead_letter` leaves warnings at their default (delivered)."""
    assert forward_policy.policy(0xB000, on_status({"failure": DEAD})) == DELIVERED


# --- precedence: exact > range > built-in permanent > class > default --------------------


def test_exact_code_beats_range() -> None:
    """An exact code in on_status wins over a range that contains it."""
    policy = on_status({"0xA700-0xA7FF": DEAD, 0xA702: RETRY})
    assert forward_policy.policy(0xA702, policy) == RETRY
    assert forward_policy.policy(0xA701, policy) == DEAD


def test_exact_code_beats_builtin_permanent() -> None:
    """`0x0124: retry` makes the built-in permanent 0x0124 retried."""
    assert forward_policy.policy(0x0124, on_status({0x0124: RETRY})) == RETRY


def test_exact_code_beats_class() -> None:
    """An exact code wins over the class key of its class."""
    policy = on_status({"failure": DEAD, "0xA701": RETRY, "warning": DEAD, "0xB007": DELIVERED})
    assert forward_policy.policy(0xA701, policy) == RETRY
    assert forward_policy.policy(0xB007, policy) == DELIVERED
    assert forward_policy.policy(0xB006, policy) == DEAD


def test_range_beats_builtin_permanent() -> None:
    """A range covering 0xA9xx overrides the built-in dead_letter."""
    policy = on_status({"0xA900-0xA9FF": RETRY})
    assert forward_policy.policy(0xA900, policy) == RETRY
    assert forward_policy.policy(0xA9FF, policy) == RETRY


def test_range_beats_class() -> None:
    """A range wins over the class key of the codes it holds, and only for those."""
    policy = on_status({"failure": RETRY, "0xC000-0xCFFF": DEAD})
    assert forward_policy.policy(0xC123, policy) == DEAD
    assert forward_policy.policy(0xA700, policy) == RETRY


def test_range_bounds_are_inclusive() -> None:
    """Both ends of a range belong to it, the codes next to it do not."""
    policy = on_status({"0xA710-0xA720": DEAD})
    assert forward_policy.policy(0xA710, policy) == DEAD
    assert forward_policy.policy(0xA720, policy) == DEAD
    assert forward_policy.policy(0xA70F, policy) == RETRY
    assert forward_policy.policy(0xA721, policy) == RETRY


def test_builtin_permanent_beats_failure_class() -> None:
    """`failure: retry` does not make 0x0124 or 0xA9xx retryable (configuration.md)."""
    policy = on_status({"failure": RETRY})
    assert forward_policy.policy(0x0124, policy) == DEAD
    assert forward_policy.policy(0xA900, policy) == DEAD


def test_builtin_permanent_beats_failure_delivered() -> None:
    """Even `failure: delivered` leaves the built-in permanent failures dead-lettered."""
    assert forward_policy.policy(0x0122, on_status({"failure": DELIVERED})) == DEAD


def test_lowercase_and_integer_keys_work_after_loading() -> None:
    """Keys written 0xa701, 0xa700-0xa7ff or as YAML integers are found by policy()."""
    policy = on_status({"0xa701": DEAD, "0xb000-0xb0ff": RETRY, 0x0124: RETRY})
    assert forward_policy.policy(0xA701, policy) == DEAD
    assert forward_policy.policy(0xB006, policy) == RETRY
    assert forward_policy.policy(0x0124, policy) == RETRY


# --- completeness --------------------------------------------------------------------------

# Every failure class a Storage SCP can answer (PS3.4 B.2.3, PS3.7 C), and what the router
# does with it by default.
GENERAL_RETRIED = frozenset(
    {0x0105, 0x0106, 0x0110, 0x0111, 0x0113, 0x0114, 0x0115, 0x0118, 0x0119, 0x0120, 0x0121,
     0x0123, 0x0210, 0x0211, 0x0212, 0x0213}
)  # fmt: skip
FAILURE_CLASSES: list[tuple[str, Container[int], str]] = [
    ("out of resources", range(0xA700, 0xA800), RETRY),
    ("data set does not match SOP class", range(0xA900, 0xAA00), DEAD),
    ("cannot understand", range(0xC000, 0xD000), RETRY),
    ("no such SOP instance, invalid object instance", {0x0112, 0x0117}, DEAD),
    ("SOP class not supported, not authorised", {0x0122, 0x0124}, DEAD),
    ("other general failures (processing failure, duplicate...)", GENERAL_RETRIED, RETRY),
]


def _expected_default(code: int) -> str | None:
    """The documented default verdict for a failure code, None if no class holds it."""
    for _, codes, verdict in FAILURE_CLASSES:
        if code in codes:
            return verdict
    return None


def _all_known_codes() -> dict[int, str]:
    """Every status code pynetdicom knows for the Storage service, with its category."""
    table = {**pyn_status.GENERAL_STATUS, **pyn_status.STORAGE_SERVICE_CLASS_STATUS}
    return {code: category for code, (category, _) in table.items()}


def test_every_failure_status_is_classified() -> None:
    """Each failure code pynetdicom knows falls into a class with a documented default."""
    failures = [c for c, cat in _all_known_codes().items() if cat == pyn_status.STATUS_FAILURE]
    assert len(failures) > 500  # the A7xx, A9xx and Cxxx ranges are in
    unclassified = [f"0x{c:04X}" for c in failures if _expected_default(c) is None]
    assert unclassified == []
    wrong = {
        f"0x{c:04X}": (forward_policy.policy(c, {}), _expected_default(c))
        for c in failures
        if forward_policy.policy(c, {}) != _expected_default(c)
    }
    assert wrong == {}


def test_router_categories_agree_with_pynetdicom() -> None:
    """status.category() puts every known success, warning and failure code where PS3.7 does."""
    wanted = {
        pyn_status.STATUS_SUCCESS: "success",
        pyn_status.STATUS_WARNING: "warning",
        pyn_status.STATUS_FAILURE: "failure",
    }
    wrong = {
        f"0x{code:04X}": (status.category(code), cat)
        for code, cat in _all_known_codes().items()
        if cat in wanted and status.category(code) != wanted[cat]
    }
    assert wrong == {}


def test_every_code_gets_a_verdict_whatever_on_status() -> None:
    """For all 16-bit codes and several policies, policy() answers one of the three verdicts."""
    policies = [
        {},
        on_status({"warning": RETRY, "failure": DEAD}),
        on_status({"0x0000-0xFFFF": DEAD}),
        on_status({0x0124: RETRY, "0xA900-0xA9FF": DELIVERED, "failure": DELIVERED}),
    ]
    for policy in policies:
        verdicts = {forward_policy.policy(code, policy) for code in range(0x10000)}
        assert verdicts <= {DELIVERED, RETRY, DEAD}


# --- backoff -------------------------------------------------------------------------------

RETRY_DEFAULTS = Retry()  # 2 s initial, 300 s max
RETRY_FAST = Retry(initial_delay=0.2, max_delay=1.0)


def nominal(attempt: int, retry: Retry) -> float:
    """min(max_delay, initial * 2**(attempt-1)) (operations.md)."""
    return float(min(retry.max_delay, retry.initial_delay * 2 ** (attempt - 1)))


@pytest.mark.parametrize("retry", [RETRY_DEFAULTS, RETRY_FAST], ids=["defaults", "fast"])
@pytest.mark.parametrize("attempt", range(1, 16))
def test_backoff_extremes_are_half_and_full_nominal(attempt: int, retry: Retry) -> None:
    """With no jitter the delay is half the nominal one; with the most jitter, all of it."""
    low = forward_policy.backoff(attempt, retry, rand=lambda: 0.0)
    high = forward_policy.backoff(attempt, retry, rand=lambda: 0.999999)
    assert low == pytest.approx(0.5 * nominal(attempt, retry))
    assert high == pytest.approx(nominal(attempt, retry), rel=1e-5)
    assert high <= nominal(attempt, retry)


@pytest.mark.parametrize("retry", [RETRY_DEFAULTS, RETRY_FAST], ids=["defaults", "fast"])
def test_backoff_random_delays_stay_within_bounds(retry: Retry) -> None:
    """With the real random source, every delay is within 50-100 % of the nominal one."""
    rng = random.Random(1234)
    for attempt in range(1, 20):
        for _ in range(200):
            delay = forward_policy.backoff(attempt, retry, rand=rng.random)
            assert 0.5 * nominal(attempt, retry) <= delay <= nominal(attempt, retry)


def test_backoff_doubles_then_caps_at_max_delay() -> None:
    """Nominal delays with the defaults: 2, 4, 8 ... 256, then 300 s for ever."""
    delays = [forward_policy.backoff(n, RETRY_DEFAULTS, rand=lambda: 1.0) for n in range(1, 13)]
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]


def test_backoff_uses_the_default_random_source() -> None:
    """Without `rand`, delays are jittered (not all equal) and within bounds."""
    delays = {forward_policy.backoff(3, RETRY_DEFAULTS) for _ in range(50)}
    assert len(delays) > 1
    assert all(4.0 <= d <= 8.0 for d in delays)


RETRY_MS = Retry(initial_delay=0.001, max_delay=0.002)


@pytest.mark.parametrize("retry", [RETRY_DEFAULTS, RETRY_MS], ids=["defaults", "milliseconds"])
@pytest.mark.parametrize("attempt", [1, 1_025, 10**6])
def test_backoff_survives_any_number_of_attempts(attempt: int, retry: Retry) -> None:
    """However long the outage, the delay is a float within [initial/2, max_delay]:
    2**1024 no longer overflows it (finding 1: attempt 1,025 raised OverflowError)."""
    for rand in (lambda: 0.0, lambda: 0.5, lambda: 0.999999, lambda: 1.0):
        delay = forward_policy.backoff(attempt, retry, rand=rand)
        assert isinstance(delay, float)
        assert 0.5 * min(retry.initial_delay, retry.max_delay) <= delay <= retry.max_delay
    if attempt > 1:  # long past the cap: the whole max_delay, jitter taking up to half
        assert forward_policy.backoff(attempt, retry, rand=lambda: 1.0) == retry.max_delay
        assert forward_policy.backoff(attempt, retry, rand=lambda: 0.0) == 0.5 * retry.max_delay
    else:
        assert forward_policy.backoff(attempt, retry, rand=lambda: 1.0) == retry.initial_delay


def test_on_status_parsed_once_gives_the_same_verdicts() -> None:
    """A worker's OnStatus (parsed when it starts) answers as policy() does per call."""
    keys = on_status({"failure": DEAD, "0xA700-0xA7FF": RETRY, "0xA702": DELIVERED})
    parsed = forward_policy.OnStatus.parse(keys)
    for code in (0x0000, 0x0001, 0xA700, 0xA702, 0xA7FF, 0xA900, 0xB000, 0xC000, 0x0124):
        assert parsed.verdict(code) == forward_policy.policy(code, keys)


# --- presentation contexts -----------------------------------------------------------------


def _pairs(contexts: list[PresentationContext]) -> list[tuple[str, list[str]]]:
    """(abstract syntax, [transfer syntaxes]) of each context, in order."""
    return [(str(c.abstract_syntax), [str(t) for t in c.transfer_syntax]) for c in contexts]


def test_contexts_for_uncompressed_file_propose_own_syntax_then_the_other() -> None:
    """An Explicit VR LE file: its exact syntax, then Implicit VR LE as a fallback."""
    got = _pairs(forward.contexts_for([(CTImageStorage, ExplicitVRLittleEndian)]))
    assert got == [
        (CTImageStorage, [ExplicitVRLittleEndian]),
        (CTImageStorage, [ImplicitVRLittleEndian]),
    ]


def test_contexts_for_compressed_file_propose_own_syntax_then_uncompressed() -> None:
    """A JPEG file: the JPEG context first, then Explicit and Implicit VR LE."""
    got = _pairs(forward.contexts_for([(CTImageStorage, JPEGBaseline8Bit)]))
    assert got[0] == (CTImageStorage, [JPEGBaseline8Bit])
    assert got[1][0] == CTImageStorage
    assert set(got[1][1]) == UNCOMPRESSED
    assert len(got) == 2


def test_contexts_for_big_endian_file_falls_back_to_little_endian() -> None:
    """A retired Explicit VR BE file still gets both little-endian syntaxes as fallback."""
    got = _pairs(forward.contexts_for([(MRImageStorage, ExplicitVRBigEndian)]))
    assert got[0] == (MRImageStorage, [ExplicitVRBigEndian])
    assert set(got[1][1]) == UNCOMPRESSED


def test_contexts_for_dedupes_and_adds_one_fallback_per_class() -> None:
    """Repeated pairs are proposed once; two syntaxes of one class share one fallback."""
    got = _pairs(
        forward.contexts_for(
            [
                (CTImageStorage, JPEGBaseline8Bit),
                (CTImageStorage, JPEGBaseline8Bit),
                (CTImageStorage, JPEG2000Lossless),
                (MRImageStorage, ExplicitVRLittleEndian),
            ]
        )
    )
    assert got.count((CTImageStorage, [JPEGBaseline8Bit])) == 1
    assert (CTImageStorage, [JPEG2000Lossless]) in got
    ct_fallbacks = [ts for cls, ts in got if cls == CTImageStorage and set(ts) == UNCOMPRESSED]
    assert len(ct_fallbacks) == 1
    assert (MRImageStorage, [ExplicitVRLittleEndian]) in got
    assert (MRImageStorage, [ImplicitVRLittleEndian]) in got


def test_contexts_for_every_pair_has_its_exact_syntax_proposed() -> None:
    """Each (class, syntax) asked for is proposed on a context with that syntax alone first."""
    syntaxes = (JPEGBaseline8Bit, ImplicitVRLittleEndian)
    asked = [(f"1.2.3.4.{i}", ts) for i in range(10) for ts in syntaxes]
    got = _pairs(forward.contexts_for(asked))
    for cls, ts in asked:
        assert (cls, [ts]) in got


def test_contexts_for_never_exceeds_128() -> None:
    """However many classes are asked for, at most 128 contexts (PS3.8 odd IDs 1-255)."""
    asked = [(f"1.2.3.4.{i}", JPEGBaseline8Bit) for i in range(300)]
    contexts = forward.contexts_for(asked)
    assert len(contexts) <= 128
    assert len(forward.contexts_for(asked[:64])) == 128  # 64 classes x (own + fallback)


def test_contexts_for_keeps_the_pairs_asked_first_when_it_cuts() -> None:
    """The instance in hand is proposed first, so a cut at 128 never drops its context."""
    needed = ("1.2.840.10008.5.1.4.1.1.4", JPEGBaseline8Bit)
    others = [(f"1.2.3.4.{i}", JPEGBaseline8Bit) for i in range(200)]
    got = _pairs(forward.contexts_for([needed, *others]))
    assert len(got) == 128
    assert (needed[0], [needed[1]]) in got
