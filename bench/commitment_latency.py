"""Storage commitment: time from a study's last delivery to the modality's N-EVENT-REPORT.

    .venv/bin/python bench/commitment_latency.py [-n 5] [--rounds 20] [--relayed]

Each round: a study of n CTs sent to the router, the N-ACTION sent at once (the modality
releases its association: the report comes on a new one), then the modality's report
awaited, polled every 5 ms. Prints the median and p95 of (report - last delivery). A
random pause (0-1 s) between rounds keeps them from falling into step with the once-a-second
commitment timer (each would otherwise start just after a tick and wait a whole one).

answer: delivered (default): the PACS is storescp; the moment it has the last instance is
polled. The forwarder's commitment timer looks when a delivery finishes (and once a
second).

--relayed: the PACS is Orthanc with `commitment: true`: the router asks it (N-ACTION) once
the study is delivered and Orthanc reports on a new association to the router. The
moments come from the spool (the last delivery's `updated_at`, the relay's
`answered_at`), and a second line gives (modality's report - PACS's report recorded).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median, quantiles

from harness import RouterDaemon, make_ct, rule_file, workdir
from pydicom.uid import CTImageStorage, generate_uid

from tests.peers import LOOPBACK, CommitmentModality, Orthanc, StoreSCP, storescu

RULES = """\
callers:
  - {ae_title: MODALITY, commitment_port: %d}
  - {ae_title: STORESCU}
storage_commitment: {answer: %s, timeout: 1h}
destinations:
  pacs: {ae_title: %s, host: 127.0.0.1, port: %d%s}
default:
  - forward: pacs
"""


def spool_moments(queue_db: Path, uid: str, sops: Sequence[str]) -> tuple[float, float]:
    """(last delivery, PACS's report recorded) of a relayed transaction, in Unix time."""
    marks = ",".join("?" * len(sops))
    with sqlite3.connect(f"file:{queue_db}?mode=ro", uri=True) as db:
        (delivered,) = db.execute(
            "SELECT MAX(d.updated_at) FROM deliveries d JOIN objects o ON o.id=d.object_id"
            f" WHERE d.state='delivered' AND o.sop_instance_uid IN ({marks})",
            list(sops),
        ).fetchone()
        (answered,) = db.execute(
            "SELECT MAX(answered_at) FROM commitment_relays WHERE transaction_uid=?", (uid,)
        ).fetchone()
    return float(delivered), float(answered)


def summary(what: str, values: list[float], rounds: int, n: int) -> str:
    """One line: median, p95 and max in ms."""
    p95 = quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]
    return (
        f"{what} over {rounds} studies of {n}: median {median(values) * 1000:.0f} ms, "
        f"p95 {p95 * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
    )


def main() -> None:
    """Run the rounds and print the latency."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5, help="instances per study")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--relayed", action="store_true", help="Orthanc PACS asked to commit")
    args = parser.parse_args()
    base = workdir("commitment")
    modality = CommitmentModality()
    pacs: StoreSCP | Orthanc
    if args.relayed:
        pacs = Orthanc(base / "pacs", aet="PACS")
        body = RULES % (modality.port, "relayed", "PACS", pacs.dicom_port, ", commitment: true")
    else:
        pacs = StoreSCP(base / "pacs").start()
        body = RULES % (modality.port, "delivered", "STORESCP", pacs.port, "")
    daemon = RouterDaemon(base / "router", rule_file(body))
    if isinstance(pacs, Orthanc):
        pacs.overrides["DicomModalities"] = {
            "router": {"AET": "ROUTER", "Host": LOOPBACK, "Port": daemon.port}  # listen.ae_title
        }
        pacs.start()
    daemon.start()
    latencies: list[float] = []
    after_pacs: list[float] = []
    try:
        for r in range(args.rounds):
            time.sleep(random.uniform(0.0, 1.0))
            folder = base / f"study{r}"
            folder.mkdir()
            study = generate_uid()
            refs = [
                (CTImageStorage, str(make_ct(folder / f"{i}.dcm", 64 * 1024, study_uid=study)))
                for i in range(args.n)
            ]
            assert storescu(daemon.port, [folder], calling="STORESCU").returncode == 0
            uid = generate_uid()
            assert modality.request(daemon.port, uid, refs).Status == 0
            want = (r + 1) * args.n
            delivered = reported = 0.0
            deadline = time.monotonic() + 60
            while not reported and time.monotonic() < deadline:
                now = time.time()
                if not args.relayed and not delivered and pacs.count() >= want:
                    delivered = now
                if modality.reports:
                    reported = now
                    modality.reports.clear()
                time.sleep(0.005)
            assert reported, "no report within 60 s"
            if args.relayed:
                delivered, answered = spool_moments(
                    daemon.workdir / "spool" / "queue.db", uid, [s for _, s in refs]
                )
                after_pacs.append(reported - answered)
            assert delivered, "no delivery"
            latencies.append(reported - delivered)
    finally:
        daemon.stop()
        pacs.stop()
        modality.close()
    print(summary("last delivery -> N-EVENT-REPORT", latencies, len(latencies), args.n))
    if after_pacs:
        print(summary("PACS's report -> N-EVENT-REPORT", after_pacs, len(after_pacs), args.n))


if __name__ == "__main__":
    main()
