"""Fuzz cases: which mutation, with what bytes, from a seed alone.

A case is named `family:seed:n` ("pdu:7:42", "dataset:7:3"); everything it sends is a
function of that name, so any case of a campaign can be replayed on its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from tests.fuzz.datasets import (
    DEFLATE_KINDS,
    MISLABELLED,
    MUTATIONS,
    Base,
    bases,
    case_uid,
    explicit_bases,
    make_dataset,
    mislabelled_bases,
)
from tests.fuzz.oracle import DEFLATED_LE, invalid_reason
from tests.fuzz.pdus import IN_MUTATIONS, RQ_MUTATIONS
from tests.fuzz.proxy import PROXY_MUTATIONS

# Relative weights; the rest weigh 1. Valid controls prove the harness can succeed.
# Deep nesting and stalls (a client waits up to network_timeout) are costly, so rarer.
# A deflate bomb costs ~1 s of CPU on each side: not drawn, but every BOMB_EVERY-th
# dataset case (1 in CI).
WEIGHTS = {"rq-valid": 0.3, "pdata-valid": 0.3, "valid": 1.5, "deflate-valid": 0.5,
           "deflate-bomb": 0.0, "deep-nesting": 0.3, "deep-nesting-unclosed": 0.3,
           "rq-stall": 0.5, "pdata-stall": 0.5, "proxy-stall": 0.3}
BOMB_EVERY = 1000
PDU_KINDS = [*RQ_MUTATIONS, *PROXY_MUTATIONS, *IN_MUTATIONS]
DATASET_KINDS = [*MUTATIONS, *DEFLATE_KINDS, MISLABELLED]


@dataclass
class Case:
    """One fuzz case: its name, mutation kind and, for datasets, what is sent."""

    name: str
    family: str  # "rq", "proxy", "in" or "dataset"
    kind: str
    rng: random.Random
    base: Base | None = None
    uid: str = ""
    data: bytes = b""
    transfer_syntax: str = ""
    invalid: str | None = None  # the oracle's verdict: None = structurally valid


def _choose(rng: random.Random, kinds: list[str]) -> str:
    return rng.choices(kinds, [WEIGHTS.get(k, 1.0) for k in kinds])[0]


def make_case(name: str) -> Case:
    """The case `family:seed:n`, its dataset built and judged."""
    family, _seed, n = name.split(":")
    rng = random.Random(name)
    if family == "pdu":
        kind = _choose(rng, PDU_KINDS)
        family = "rq" if kind in RQ_MUTATIONS else "proxy" if kind in PROXY_MUTATIONS else "in"
        return Case(name, family, kind, rng)
    if family != "dataset":
        raise ValueError(f"unknown case family in {name!r}")
    kind = _choose(rng, DATASET_KINDS)
    if int(n) % BOMB_EVERY == 7:
        kind = "deflate-bomb"
    if kind in DEFLATE_KINDS:
        base = rng.choice(explicit_bases())
    else:
        base = rng.choice(mislabelled_bases() if kind == MISLABELLED else list(bases()))
    uid = case_uid(rng)
    data, syntax = make_dataset(kind, rng, base, uid)
    return Case(name, "dataset", kind, rng, base, uid, data, syntax, invalid_reason(data, syntax))


def case_names(seed: int, pdus: int, datasets: int) -> list[str]:
    """A campaign's case names, PDUs and datasets interleaved."""
    names = [f"pdu:{seed}:{n}" for n in range(pdus)]
    ds_names = [f"dataset:{seed}:{n}" for n in range(datasets)]
    step = max(1, len(names) // max(1, len(ds_names)))
    out: list[str] = []
    for n, name in enumerate(ds_names):
        out += [*names[n * step:(n + 1) * step], name]
    return out + names[len(ds_names) * step :]


@cache
def contexts() -> tuple[tuple[int, str, str], ...]:
    """Every presentation context a fuzz association proposes: Verification, each base."""
    wanted = [("1.2.840.10008.1.1", "1.2.840.10008.1.2")]
    for base in bases():
        wanted.append((base.sop_class, base.transfer_syntax))
    for base in explicit_bases():
        wanted.append((base.sop_class, DEFLATED_LE))
    unique = list(dict.fromkeys(wanted))
    return tuple((2 * n + 1, abstract, syntax) for n, (abstract, syntax) in enumerate(unique))
