"""From a received file to the status its sender gets: decide, then run the actions.

The contract (design §5): 0x0000 only once every action is done and durable (stores
fsync'd and renamed, queued forwards spooled and committed); a `warn`, or a `modify`
without one, answers its warning; `reject` answers its code and keeps nothing; a full or
unwritable target answers 0xA700; a dataset whose SOP Class UID is not the request's
answers 0xA900; an unparsable dataset 0xC210; a sync forward the destination's status
(0xA700 when unreachable); any other exception 0xC211, logged, and the daemon serves on.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset

from router.actions import deidentify, modify
from router.actions.plan import Plan, lookup, make_plan
from router.config.actions import (
    Action,
    DeidentifyAction,
    DiscardAction,
    ForwardAction,
    ModifyAction,
    NotifyAction,
    RejectAction,
    StoreAction,
    WarnAction,
)
from router.dicom import header as dataset
from router.dicom.status import INTERNAL_ERROR, OUT_OF_RESOURCES, SUCCESS, is_warning
from router.errors import ActionError, OutOfResources, SOPClassMismatch
from router.observe import metrics
from router.rules.engine import Decision, Facts, NeedsTags, decide
from router.rules.ruleset import LoadedConfig
from router.spool import durable as store
from router.spool.decisions import DecisionRecord

log = logging.getLogger("router.store")

# A received file's fsync starts as soon as the pipeline has it, in one of this many
# threads, while the walk, the header read and the rules run (~1 ms on this project's
# machine): a store or a queued forward then waits only for what is left of it. A fsync
# nobody waited for is cancelled if it has not started, so the queue stays within the
# C-STOREs being handled.
SYNC_THREADS = 4


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
    collected: bool = False  # held for its series or study (collect, notify)


class Forwarding(Protocol):
    """The seam to the spool and forwarders."""

    def enqueue(
        self,
        file: Path,
        destinations: Sequence[str],
        received: Received,
        identity: Dataset,
        held: Mapping[str, str] | None = None,
        rule: str = "",
    ) -> None:
        """Durably queue `file` for each destination before returning; `held` ones (the
        destination's collect level) wait for their series or study to complete."""

    def send_now(self, destination: str, file: Path, identity: Dataset) -> tuple[int, str | None]:
        """Send `file` and return the destination's status and comment (sync mode)."""


class Journal(Protocol):
    """Where decisions are logged for `trace`."""

    def record(self, rec: DecisionRecord) -> None:
        """Append one decision."""


class Pipeline:
    """Runs decisions on received files; thread-safe, one per receiving process.

    It owns the threads that fsync received files early: `close()` them once no
    C-STORE can arrive any more.
    """

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
        self._plans: dict[str, Plan] = {}
        self._syncers = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fsync")

    def close(self) -> None:
        """Wait for the fsyncs under way and end their threads (after the SCP drained)."""
        self._syncers.shutdown(wait=True)

    def process(self, received: Received) -> Outcome:
        """Decide and act on one received instance; never raises."""
        timer = metrics.c_store_started(received.path)
        loaded = self._current()  # the rules current when this C-STORE arrived
        header: Dataset | None = None
        decision: Decision | None = None
        early: Future[None] | None = None
        collected = False
        try:
            # Backpressure before anything else: below spool_min_free every new instance
            # gets 0xA700, whatever a rule would do with it.
            if received.receive_error:
                raise OutOfResources(received.receive_error)
            _check_free_space(self._work_dir.parent, loaded.config.spool_min_free)
            early = self._syncers.submit(store.fsync_file, received.path)
            plan = self._plan(loaded)
            decision, header = self._evaluate(plan, loaded, received)
            work = _Work(received, plan, decision.status, header, early, rule=decision.rule)
            status, comment = self._run(work, decision.actions)
            collected = any(q.held for q in work.queued.values())
        except ActionError as exc:
            status, comment = exc.status, str(exc)
        except Exception as exc:  # a bug: answer 0xC211 and keep serving
            log.exception(
                "internal error on %s from %s", received.sop_instance_uid, received.calling_ae
            )
            status, comment = INTERNAL_ERROR, f"internal error: {type(exc).__name__}"
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
            collected=collected,
        )
        if self._journal is not None:
            self._record(self._journal, received, outcome)
        metrics.c_store_done(timer, received.calling_ae, outcome.status, outcome.rule)
        return outcome

    @staticmethod
    def _record(journal: Journal, received: Received, outcome: Outcome) -> None:
        try:
            journal.record(
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
        return self._evaluate(self._plan(loaded), loaded, received)

    @staticmethod
    def _evaluate(plan: Plan, loaded: LoadedConfig, received: Received) -> tuple[Decision, Dataset]:
        header = dataset.read_received(received.path, plan.keywords)  # walks it first
        for defect in dataset.check_identity(header, received.sop_instance_uid):
            # Accepted, stored and forwarded as received (as DCMTK and Orthanc do): said once.
            log.warning(
                "C-STORE from %s@%s: non-conformant %s, kept as received",
                received.calling_ae,
                received.peer,
                defect,
                extra={"event": "non-conformant-uid"},
            )
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

    def _plan(self, loaded: LoadedConfig) -> Plan:
        plan = self._plans.get(loaded.version)
        if plan is None:
            plan = make_plan(loaded)
            self._plans = {loaded.version: plan}  # only the current version is kept
        return plan

    def _run(self, work: _Work, actions: Sequence[Action]) -> tuple[int, str | None]:
        """Run the decided actions in order; queued forwards are committed at the end.

        A failed sync forward ends the run: its status is answered and nothing is queued.
        """
        try:
            for action in actions:
                if not _HANDLERS[type(action)](self, work, action):
                    return work.status, work.comment
                if work.withheld:
                    break  # burned-in: nothing after its deidentify gets this instance
            if work.queued:
                forwarding = self._forwarder()
                for file, queued in work.queued.items():
                    forwarding.enqueue(
                        file,
                        queued.destinations,
                        work.received,
                        queued.identity,
                        queued.held,
                        work.rule,
                    )
            return work.status, work.comment
        finally:
            for temp in work.temps:
                temp.unlink(missing_ok=True)

    def _modify(self, work: _Work, action: ModifyAction) -> bool:
        target = self._work_dir / f"{uuid.uuid4().hex}.dcm"
        work.temps.append(target)  # removed at the end of the run, whatever happens
        modify.apply_modify(work.file, action.modify, target)
        # What follows acts on the modified copy: not synced yet, its own header.
        work.file, work.synced, work.early = target, False, None
        work.header = dataset.read_header(target, work.plan.keywords)
        return True

    def _deidentify(self, work: _Work, action: DeidentifyAction) -> bool:
        """Like modify, with the named PS3.15 profile; a burned-in image is withheld."""
        name = action.deidentify
        profile = work.plan.deidentify[name]
        if profile.burned_in == "refuse" and deidentify.may_have_burned_in(work.header):
            work.withheld = True
            work.comment = deidentify.withhold(name, work.received)
            return True
        target = self._work_dir / f"{uuid.uuid4().hex}.dcm"
        work.temps.append(target)
        deidentify.apply(work.file, profile.transform(name), target)
        work.file, work.synced, work.early = target, False, None
        work.header = dataset.read_header(target, work.plan.keywords)
        return True

    def _store(self, work: _Work, action: StoreAction) -> bool:
        work.make_durable()
        template, on_exists = work.plan.templates[action.store.to]
        store.place(
            work.file,
            template.target(lookup(work.header)),
            action.store.on_exists or on_exists,
            synced=True,
            journal=self._work_dir.parent / store.JOURNAL,
        )
        return True

    def _forward(self, work: _Work, action: ForwardAction) -> bool:
        work.make_durable()
        forwarding = self._forwarder()
        spec = action.forward
        if spec.mode == "sync":
            got, work.comment = forwarding.send_now(spec.to, work.file, work.header)
            if got != SUCCESS:
                work.status = got
                return is_warning(got)  # a failure ends the run
            return True
        work.queue(spec.to, spec.collect)
        return True

    def _notify(self, work: _Work, action: NotifyAction) -> bool:
        """A webhook told when the unit completes: a delivery held with the instance."""
        work.make_durable()
        self._forwarder()
        work.queue(action.notify.to, action.notify.on)
        return True

    def _no_work(self, _work: _Work, _action: object) -> bool:
        """reject, warn and discard: their status is the decision's; nothing to do."""
        return True

    def _forwarder(self) -> Forwarding:
        if self._forwarding is None:
            raise ActionError("forwarding is not running", status=OUT_OF_RESOURCES)
        return self._forwarding


@dataclass(slots=True)
class _Queued:
    """Queued forwards of one file: enqueued together once every action has succeeded."""

    identity: Dataset
    destinations: list[str]
    held: dict[str, str] = field(default_factory=dict)  # destination -> collect level


@dataclass(slots=True)
class _Work:
    """One C-STORE's actions under way: the file the next action reads, and what is owed."""

    received: Received
    plan: Plan
    status: int  # the decision's, until a sync forward answers otherwise
    header: Dataset  # read from `file`
    early: Future[None] | None  # the received file's fsync, started on arrival
    file: Path = field(init=False)  # the received file, or the last modify's output
    comment: str | None = None
    synced: bool = False
    temps: list[Path] = field(default_factory=list)
    queued: dict[Path, _Queued] = field(default_factory=dict)
    rule: str = ""
    withheld: bool = False  # a deidentify refused it: the actions after it are skipped

    def __post_init__(self) -> None:
        self.file = self.received.path

    def queue(self, destination: str, collect: str | None) -> None:
        """Owe a queued delivery of `file` (held until its unit completes with `collect`)."""
        queued = self.queued.get(self.file)
        if queued is None:
            queued = self.queued[self.file] = _Queued(self.header, [])
        queued.destinations.append(destination)  # one enqueue for all of a file's forwards
        if collect:
            queued.held[destination] = collect

    def make_durable(self) -> None:
        """fsync `file` before a store or a forward relies on it (once per file)."""
        if not self.synced:
            _fsync_durable(self.file, self.early)
            self.synced = True


# One handler per action kind; each returns False when the run must end there.
_HANDLERS: dict[type, Callable[[Pipeline, _Work, Any], bool]] = {
    ModifyAction: Pipeline._modify,
    DeidentifyAction: Pipeline._deidentify,
    StoreAction: Pipeline._store,
    ForwardAction: Pipeline._forward,
    NotifyAction: Pipeline._notify,
    RejectAction: Pipeline._no_work,  # always a rule's only action (config check)
    WarnAction: Pipeline._no_work,
    DiscardAction: Pipeline._no_work,
}


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
