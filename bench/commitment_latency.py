"""Storage commitment: time from a study's last delivery to the modality's N-EVENT-REPORT.

    .venv/bin/python bench/commitment_latency.py [-n 5] [--rounds 20]

Each round: a study of n CTs sent to the router (forward to storescp), the N-ACTION sent
at once (the modality releases its association: the report comes on a new one), then the
moments the PACS has the last instance and the modality has the report are polled every
5 ms. Prints the median and p95 of (report - last delivery). The forwarder's commitment
timer ticks once a second, so ~0.5 s on average is expected.
"""

from __future__ import annotations

import argparse
import time
from statistics import median, quantiles

from harness import RouterDaemon, make_ct, rule_file, workdir
from pydicom.uid import CTImageStorage, generate_uid

from tests.peers import CommitmentModality, StoreSCP, storescu

RULES = """\
callers:
  - {ae_title: MODALITY, commitment_port: %d}
  - {ae_title: STORESCU}
storage_commitment: {answer: delivered, timeout: 1h}
destinations:
  pacs: {ae_title: STORESCP, host: 127.0.0.1, port: %d}
default:
  - forward: pacs
"""


def main() -> None:
    """Run the rounds and print the latency."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5, help="instances per study")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    base = workdir("commitment")
    modality = CommitmentModality()
    pacs = StoreSCP(base / "pacs").start()
    daemon = RouterDaemon(base / "router", rule_file(RULES % (modality.port, pacs.port))).start()
    latencies = []
    try:
        for r in range(args.rounds):
            folder = base / f"study{r}"
            folder.mkdir()
            study = generate_uid()
            refs = [
                (CTImageStorage, str(make_ct(folder / f"{i}.dcm", 64 * 1024, study_uid=study)))
                for i in range(args.n)
            ]
            assert storescu(daemon.port, [folder], calling="STORESCU").returncode == 0
            assert modality.request(daemon.port, generate_uid(), refs).Status == 0
            want = (r + 1) * args.n
            delivered = reported = 0.0
            deadline = time.monotonic() + 60
            while not reported and time.monotonic() < deadline:
                now = time.monotonic()
                if not delivered and pacs.count() >= want:
                    delivered = now
                if modality.reports:
                    reported = now
                    modality.reports.clear()
                time.sleep(0.005)
            assert delivered and reported, "no delivery or no report within 60 s"
            latencies.append(reported - delivered)
    finally:
        daemon.stop()
        pacs.stop()
        modality.close()
    p95 = quantiles(latencies, n=20)[-1] if len(latencies) >= 2 else latencies[0]
    print(
        f"last delivery -> N-EVENT-REPORT over {len(latencies)} studies of {args.n}: "
        f"median {median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
