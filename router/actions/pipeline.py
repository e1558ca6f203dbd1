"""From a received file to the status its sender gets: decide, then run the actions.

The contract (design §5): 0x0000 only once every action is done and durable (stores
fsync'd and renamed, queued forwards spooled and committed); a `warn`, or a `modify`
without one, answers its warning; `reject` answers its code and keeps nothing; a full or
unwritable target answers 0xA700; a dataset whose SOP Class UID is not the request's
answers 0xA900; an unparsable dataset 0xC210; a sync forward the destination's status
(0xA700 when unreachable); any other exception 0xC211, logged, and the daemon serves on.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from router.actions import modify
from router.actions.templates import Template, template_fields
from router.config.model import (
    Action,
    FilesystemDestination,
    ForwardAction,
    ModifyAction,
    RejectAction,
    StoreAction,
)
from router.dicom import header as dataset
from router.dicom.status import is_warning
from router.errors import ActionError, OutOfResources, SOPClassMismatch
from router.observe import metrics
from router.rules.engine import Decision, Facts, NeedsTags, decide, wanted_tags
from router.rules.ruleset import LoadedConfig
from router.spool import durable as store
from router.spool.database import DecisionRecord

log = logging.getLogger("router.store")

# A received file's fsync starts as soon as the pipeline has it, in one of these threads,
# while the walk, the header read and the rules run (~1 ms on this project's machine):
# a store or a queued forward then waits only for what is left of it. A fsync nobody
# waited for is cancelled if it has not started, so the queue stays within the C-STOREs
# being handled.
_SYNCERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fsync")


@dataclass(frozen=True)
class Received:
    """One C-STORE as the SCP saw it: the file on disk and the association's facts."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae: str
    called_ae: str
    peer: str
    transfer_syntax: str
    receive_error: str | None = None  # the dataset could not be written (disk full)

    def facts(self) -> Facts:
        """The rule engine's view of this C-STORE (no tags yet)."""
        return Facts(
            self.sop_class_uid, self.calling_ae, self.called_ae, self.peer, self.transfer_syntax
        )


@dataclass(frozen=True)
class Outcome:
    """What happened to one C-STORE: the status answered and why."""

    status: int
    rule: str
    actions: tuple[str, ...]
    config_version: str
    comment: str | None = None
    study_uid: str = ""
    series_uid: str = ""
    forwards: tuple[str, ...] = ()


class Forwarding(Protocol):
    """The seam to the spool and forwarders."""

    def enqueue(
        self, file: Path, destinations: Sequence[str], received: Received, identity: Dataset
    ) -> None:
        """Durably queue `file` for each destination before returning."""

    def send_now(self, destination: str, file: Path, identity: Dataset) -> tuple[int, str | None]:
        """Send `file` and return the destination's status and comment (sync mode)."""


class Journal(Protocol):
    """Where decisions are logged for `trace`."""

    def record(self, rec: DecisionRecord) -> None:
        """Append one decision."""


@dataclass
class _Plan:
    """What a rule set needs from every header: computed once per config version."""

    keywords: frozenset[str]  # everything read from the header
    tags: frozenset[str] = frozenset()  # what the rules' `tags` match on
    templates: Mapping[str, tuple[Template, str]] = field(default_factory=dict)
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # rule -> actions


def action_names(actions: Sequence[Action]) -> tuple[str, ...]:
    """Short text for each action, for logs and `explain`."""
    out = []
    for action in actions:
        ((kind, spec),) = action.model_dump(exclude_none=True).items()
        if isinstance(spec, dict) and "to" in spec:
            mode = spec.get("mode")
            out.append(f"{kind}:{spec['to']}" + (f"({mode})" if mode == "sync" else ""))
        elif isinstance(spec, int) and not isinstance(spec, bool):
            out.append(f"{kind}:0x{spec:04X}")
        else:
            out.append(kind)
    return tuple(out)


class Pipeline:
    """Runs decisions on received files; thread-safe, one instance per daemon."""

    def __init__(
        self,
        current: Callable[[], LoadedConfig],
        forwarding: Forwarding | None,
        work_dir: Path,
        journal: Journal | None = None,
    ) -> None:
        self._current = current
        self._forwarding = forwarding
        self._journal = journal
        self._work_dir = work_dir
        self._plans: dict[str, _Plan] = {}

    def process(self, received: Received) -> Outcome:
        """Decide and act on one received instance; never raises."""
        timer = metrics.c_store_started(received.path)
        loaded = self._current()  # the rules current when this C-STORE arrived
        header: Dataset | None = None
        decision: Decision | None = None
        early: Future[None] | None = None
        try:
            # Backpressure before anything else: below spool_min_free every new instance
            # gets 0xA700, whatever a rule would do with it.
            if received.receive_error:
                raise OutOfResources(received.receive_error)
            _check_free_space(self._work_dir.parent, loaded.config.spool_min_free)
            early = _SYNCERS.submit(store.fsync_file, received.path)
            decision, header = self.evaluate(loaded, received)
            status, comment = self._run(loaded, decision, received, header, early)
        except ActionError as exc:
            status, comment = exc.status, str(exc)
        except Exception as exc:  # a bug: answer 0xC211 and keep serving
            log.exception(
                "internal error on %s from %s", received.sop_instance_uid, received.calling_ae
            )
            status, comment = 0xC211, f"internal error: {type(exc).__name__}"
        finally:
            if early is not None:
                early.cancel()  # not needed after all (reject, bad dataset...): if not started
        outcome = Outcome(
            status=status,
            rule=decision.rule if decision else "-",
            actions=self._plan(loaded).names[decision.rule] if decision else (),
            config_version=loaded.version,
            comment=comment,
            study_uid=str(header.get("StudyInstanceUID", "")) if header else "",
            series_uid=str(header.get("SeriesInstanceUID", "")) if header else "",
            forwards=tuple(decision.forwards) if decision else (),
        )
        if self._journal is not None:
            self._record(received, outcome)
        metrics.c_store_done(timer, received.calling_ae, outcome.status, outcome.rule)
        return outcome

    def _record(self, received: Received, outcome: Outcome) -> None:
        assert self._journal is not None
        try:
            self._journal.record(
                DecisionRecord(
                    at=time.time(),
                    sop_instance_uid=received.sop_instance_uid,
                    series_uid=outcome.series_uid,
                    study_uid=outcome.study_uid,
                    sop_class_uid=received.sop_class_uid,
                    calling_ae=received.calling_ae,
                    called_ae=received.called_ae,
                    peer=received.peer,
                    rule=outcome.rule,
                    actions=",".join(outcome.actions),
                    status=outcome.status,
                    comment=outcome.comment,
                    config_version=outcome.config_version,
                )
            )
        except Exception:  # the log is for people; it must never fail a C-STORE
            log.exception("cannot write the decision log")

    def evaluate(self, loaded: LoadedConfig, received: Received) -> tuple[Decision, Dataset]:
        """Read the header as far as needed, check its SOP class, and decide."""
        plan = self._plan(loaded)
        header = dataset.read_received(received.path, plan.keywords)  # walks it first
        dataset.check_identity(header, received.sop_instance_uid)
        found = str(header.SOPClassUID)
        if found != received.sop_class_uid:
            raise SOPClassMismatch(
                f"dataset SOP Class UID {found} differs from the request's {received.sop_class_uid}"
            )
        facts = received.facts()
        result = decide(loaded.config, facts)
        if isinstance(result, NeedsTags):
            tags = dataset.tag_values(header, plan.tags)
            result = decide(loaded.config, replace(facts, tags=tags))
            assert not isinstance(result, NeedsTags)
        return result, header

    def _plan(self, loaded: LoadedConfig) -> _Plan:
        plan = self._plans.get(loaded.version)
        if plan is None:
            tags = wanted_tags(loaded.config)
            keywords = set(tags)
            templates = {}
            for name, dest in loaded.config.destinations.items():
                if isinstance(dest, FilesystemDestination):
                    fields = template_fields(dest.path)
                    keywords.update(fields)
                    templates[name] = (Template(loaded.base_dir, dest.path), dest.on_exists)
            names = {rule.name: action_names(rule.actions) for rule in loaded.config.rules}
            names["default"] = action_names(loaded.config.default)
            plan = _Plan(frozenset(keywords), tags, templates, names)
            self._plans = {loaded.version: plan}  # only the current version is kept
        return plan

    def _run(
        self,
        loaded: LoadedConfig,
        decision: Decision,
        received: Received,
        header: Dataset,
        early: Future[None] | None = None,
    ) -> tuple[int, str | None]:
        actions = decision.actions
        if any(isinstance(a, RejectAction) for a in actions):
            return decision.status, None
        work, synced, temps = received.path, False, []
        queued: list[tuple[Path, Dataset, list[str]]] = []
        status: int = decision.status
        comment: str | None = None
        try:
            for action in actions:
                if isinstance(action, ModifyAction):
                    target = self._work_dir / f"{uuid.uuid4().hex}.dcm"
                    temps.append(target)
                    modify.apply_modify(work, action.modify, target)
                    work, synced = target, False
                    header = dataset.read_header(work, self._plan(loaded).keywords)
                elif isinstance(action, StoreAction | ForwardAction) and not synced:
                    _fsync_durable(work, early if work == received.path else None)
                    synced = True
                if isinstance(action, StoreAction):
                    template, on_exists = self._plan(loaded).templates[action.store.to]
                    target = template.target(_lookup(header))
                    store.place(
                        work,
                        target,
                        action.store.on_exists or on_exists,
                        synced=True,
                        journal=self._work_dir.parent / store.JOURNAL,
                    )
                elif isinstance(action, ForwardAction):
                    if self._forwarding is None:
                        raise ActionError("forwarding is not running", status=0xA700)
                    if action.forward.mode == "sync":
                        got, comment = self._forwarding.send_now(action.forward.to, work, header)
                        if got != 0x0000:
                            status = got
                            if not is_warning(got):
                                return status, comment
                    elif queued and queued[-1][0] == work:
                        queued[-1][2].append(action.forward.to)
                    else:
                        queued.append((work, header, [action.forward.to]))
            for file, identity, names in queued:
                assert self._forwarding is not None
                self._forwarding.enqueue(file, names, received, identity)
            return status, comment
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)


def _lookup(header: Dataset) -> Callable[[str], str | None]:
    def value(keyword: str) -> str | None:
        tag = keyword_tag(keyword)
        items = dataset.text_values(header.get(tag))  # a tag key gets the element
        return "\\".join(items) if items else None

    return value


@functools.cache
def keyword_tag(keyword: str) -> BaseTag:
    """A DICOM keyword's tag (pydicom resolves the keyword on every lookup otherwise)."""
    return Tag(keyword)


def _fsync_durable(path: Path, started: Future[None] | None = None) -> None:
    try:
        if started is not None:
            started.result()  # cancelled only by the pipeline itself, after this
        else:
            store.fsync_file(path)
    except OSError as exc:
        raise OutOfResources(f"cannot sync the received file: {exc.strerror}") from exc


def _check_free_space(spool: Path, minimum: int) -> None:
    try:
        st = os.statvfs(spool)
    except OSError as exc:
        raise OutOfResources(f"spool {spool} unusable: {exc.strerror}") from exc
    free = st.f_bavail * st.f_frsize
    if free < minimum:
        raise OutOfResources(
            f"spool has {free // 2**20} MiB free, below spool_min_free ({minimum // 2**20} MiB)"
        )
