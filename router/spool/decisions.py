"""The decision log: one row per C-STORE in decisions.db, and `trace` over it and the queue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.spool.db import Databases
from router.spool.queue import Delivery, Queue


@dataclass(frozen=True)
class DecisionRecord:
    """One C-STORE as the decision log keeps it."""

    at: float
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    calling_ae: str
    called_ae: str
    peer: str
    rule: str
    actions: str
    status: int
    comment: str | None
    config_version: str


_COLUMNS = (
    "at, sop_instance_uid, series_uid, study_uid, sop_class_uid, calling_ae, called_ae, peer,"
    " rule, actions, status, comment, config_version"
)  # in DecisionRecord's order


class DecisionLog:
    """The decisions table of decisions.db; thread-safe."""

    def __init__(self, db: Databases) -> None:
        self._db = db

    def record_many(self, recs: Sequence[DecisionRecord]) -> None:
        """Append C-STOREs to the decision log, in one transaction."""
        with self._db.decisions() as db:
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO decisions (at, sop_instance_uid, series_uid, study_uid,"
                " sop_class_uid, calling_ae, called_ae, peer, rule, actions, status, comment,"
                " config_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        rec.at,
                        rec.sop_instance_uid,
                        rec.series_uid,
                        rec.study_uid,
                        rec.sop_class_uid,
                        rec.calling_ae,
                        rec.called_ae,
                        rec.peer,
                        rec.rule,
                        rec.actions,
                        rec.status,
                        rec.comment,
                        rec.config_version,
                    )
                    for rec in recs
                ],
            )
            db.execute("COMMIT")

    def find(self, uid: str) -> list[DecisionRecord]:
        """The decisions about a study, series or instance UID, oldest first."""
        with self._db.decisions() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM decisions"
                " WHERE sop_instance_uid=?1 OR series_uid=?1 OR study_uid=?1 ORDER BY at, id",
                (uid,),
            ).fetchall()
        return [DecisionRecord(*r) for r in rows]

    def received_since(self, since: float, scan: int) -> int:
        """How many of the newest `scan` C-STOREs came after `since` (epoch s)."""
        with self._db.decisions() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM (SELECT at FROM decisions ORDER BY id DESC LIMIT ?)"
                " WHERE at>?",
                (scan, since),
            ).fetchone()
        return int(row[0])

    def recent(
        self,
        limit: int,
        scan: int,
        *,
        calling_ae: str = "",
        rule: str = "",
        status: int | None = None,
    ) -> list[DecisionRecord]:
        """The newest `limit` decisions (newest first) among the last `scan`, filtered by
        calling AE, rule and status when given."""
        where = ""
        args: list[object] = [scan]
        for column, value in (("calling_ae", calling_ae), ("rule", rule), ("status", status)):
            if value not in ("", None):
                where += f" AND {column}=?"  # column names from this fixed list only
                args.append(value)
        with self._db.decisions() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM decisions WHERE id >"
                f" (SELECT COALESCE(MAX(id), 0) FROM decisions) - ?{where}"
                " ORDER BY id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [DecisionRecord(*r) for r in rows]

    def prune(self, before: float) -> None:
        """Forget the decisions made before `before` (epoch seconds)."""
        with self._db.decisions() as db:
            db.execute("DELETE FROM decisions WHERE at<?", (before,))


def trace(log: DecisionLog, queue: Queue, uid: str) -> tuple[list[DecisionRecord], list[Delivery]]:
    """Decisions and deliveries of every instance of a study, series or instance UID."""
    decisions = log.find(uid)
    sops = sorted({d.sop_instance_uid for d in decisions} | {uid})
    return decisions, queue.of_instances(sops, uid)
