"""Rule-file fixtures (`tests:`): made-up C-STOREs and what must happen to them.

Pure, like the rule engine: `check` and every reload run them, and a failing fixture
refuses the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.config.model import Config, Fixture
from router.dicom.status import hex_code
from router.rules.engine import Decision, Facts, NeedsTags, caller_allowed, decide

# What a fixture from a sender `callers` refuses gets: no association, so nothing else.
_REJECTED: dict[str, object] = {
    "associate": "rejected",
    "rule": None,
    "status": None,
    "forward": [],
    "store": [],
}


@dataclass(frozen=True)
class FixtureResult:
    """One fixture: what was expected against what the rules decided."""

    name: str
    expected: dict[str, object]
    got: dict[str, object]

    @property
    def passed(self) -> bool:
        """True when every expected key got its value."""
        return all(self.got.get(k) == v for k, v in self.expected.items())


def run_fixture(config: Config, fixture: Fixture) -> FixtureResult:
    """Admit (`callers`) and decide one fixture instance, and compare with its `expect`."""
    inst = fixture.instance
    expected = fixture.expect.model_dump(exclude_none=True)
    if not caller_allowed(config, inst.calling_ae, inst.peer):
        return FixtureResult(fixture.name, expected, _REJECTED)
    facts = Facts(
        sop_class_uid=inst.sop_class,
        calling_ae=inst.calling_ae,
        called_ae=inst.called_ae or config.listen.ae_title,
        peer=inst.peer,
        transfer_syntax=inst.transfer_syntax,
        tags={k: tuple(v) if isinstance(v, list) else (v,) for k, v in inst.tags.items()},
    )
    decision = decide(config, facts)
    assert not isinstance(decision, NeedsTags)  # fixtures always carry their tags
    return FixtureResult(fixture.name, expected, _observed(decision))


def _observed(decision: Decision) -> dict[str, object]:
    return {
        "associate": "accepted",
        "rule": decision.rule,
        "status": decision.status,
        "forward": decision.forwards,
        "store": decision.stores,
    }


def run_all(config: Config) -> list[FixtureResult]:
    """Every fixture of the rule file, in order."""
    return [run_fixture(config, f) for f in config.tests]


def describe(value: object, key: str) -> str:
    """A value as `check` prints it (statuses in hex)."""
    return hex_code(value) if key == "status" and isinstance(value, int) else str(value)
