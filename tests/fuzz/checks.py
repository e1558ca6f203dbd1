"""After a campaign: what the daemon must have kept, left behind, logged and still do."""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemon import RouterDaemon
from tests.fuzz.campaign import RULE_FILE, Campaign, Result, run_cases
from tests.fuzz.cases import case_names
from tests.peers import echoscu
from tests.test_library_logs import JSON_KEYS, TEXT_RECORD

MiB_KIB = 1024
# Growth of daemon + children (forwarder, resource tracker) over their idle RSS (~90 MiB):
# a campaign without bombs peaks ~75 MiB above idle on 2 cores with 8 clients.
RSS_GROWTH_LIMIT_KIB = 100 * MiB_KIB
STOP_LIMIT = 5.0  # SIGTERM to exit 0 once the senders are gone (test_scp_hostile's bound)
LONGEST_LINE = 2048  # characters: peer values in a record are cut (netlayer.limits.MAX_SHOWN)
STOP_TIMEOUT = 8.0  # then SIGKILL: a slow stop must not cost CI its whole budget
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
ACCEPTED = ("0x0000", "warning")


@dataclass
class Report:
    """A campaign and every property checked after it."""

    seed: int
    campaign: Campaign
    echo_ok: bool = False
    echo_output: str = ""
    spool_leftovers: list[str] = field(default_factory=list)
    stray_files: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    exceptions: Counter[str] = field(default_factory=Counter)
    stop_seconds: float = 0.0  # SIGTERM to exit
    exit_code: int | None = None
    log_tail: str = ""
    log_format: str = "json"
    log_lines: int = 0
    longest_line: int = 0  # characters
    # property -> the log lines breaking it (LOG_PROPERTIES)
    bad_lines: dict[str, list[str]] = field(default_factory=dict)

    @property
    def results(self) -> list[Result]:
        """Every case's result."""
        return self.campaign.results

    def violations(self, kind: str) -> list[Result]:
        """The cases with violation `kind`."""
        return [r for r in self.results if r.violation == kind]


def spool_leftovers(daemon: RouterDaemon, wait: float) -> list[str]:
    """Files in spool/incoming and spool/work, once `wait` s have passed without change."""
    deadline = time.monotonic() + wait
    while True:
        found = [str(p.relative_to(daemon.workdir)) for name in ("incoming", "work")
                 for p in (daemon.workdir / "spool" / name).rglob("*") if p.is_file()]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def stray_files(daemon: RouterDaemon, accepted: set[str]) -> list[str]:
    """Files that are neither bookkeeping nor the archived copy of an acknowledged case."""
    spool, archive = daemon.workdir / "spool", daemon.workdir / "archive"
    stray = []
    for path in daemon.workdir.rglob("*"):
        if not path.is_file() or path.parent in (daemon.workdir, spool):
            continue  # rule file, logs, queue and decision databases
        if path.parent in (spool / "incoming", spool / "work"):
            continue  # reported by spool_leftovers
        if path.parent == archive and path.stem in accepted:
            continue
        stray.append(str(path.relative_to(daemon.workdir)))
    missing = accepted - {p.stem for p in archive.glob("*.dcm")}
    return stray + [f"archive/{uid}.dcm (acknowledged, missing)" for uid in sorted(missing)]


def tracebacks(log: str) -> list[str]:
    """Each traceback in the daemon's log: its lines up to the exception."""
    lines, out = log.splitlines(), []
    for n, line in enumerate(lines):
        if TRACEBACK.search(line):
            end = next((m for m in range(n + 1, len(lines))
                        if lines[m] and not lines[m].startswith(" ")), len(lines) - 1)
            out.append("\n".join(lines[max(0, n - 1) : end + 1]))
    return out


NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+")
EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)): ?(.*)$")


def exception_counts(log: str) -> Counter[str]:
    """How often each exception ended a traceback (threads interleave their lines)."""
    counts: Counter[str] = Counter()
    for line in log.splitlines():
        if match := EXCEPTION.match(line):
            message = NUMBER.sub("N", match[2])[:110]
            counts[f"{match[1]}: {message}"] += 1
    return counts


CONTROL_BYTE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # a tab may stay raw
EXCEPTION_NAME = re.compile(r"\b[A-Za-z_]\w*(?:Error|Exception)\b")
LOG_PROPERTIES = {
    "not-a-record": "not one record of the log format (JSON object / `TIME LEVEL LOGGER:`)",
    "control-byte": "holding an unescaped control byte",
    "exception-name": "naming an exception class",
}


def is_record(line: str, log_format: str) -> bool:
    """True when `line` is one whole record of the router's formatter."""
    if log_format != "json":
        return bool(TEXT_RECORD.match(line))
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.keys() >= JSON_KEYS


def bad_lines(log: str, log_format: str) -> dict[str, list[str]]:
    """Each of LOG_PROPERTIES -> the lines of `log` that break it."""
    lines = log.splitlines()
    return {
        "not-a-record": [line for line in lines if not is_record(line, log_format)],
        "control-byte": [line for line in lines if CONTROL_BYTE.search(line)],
        "exception-name": [line for line in lines if EXCEPTION_NAME.search(line)],
    }


def run_campaign(workdir: Path, seed: int, pdus: int, datasets: int, workers: int = 6,
                 names: list[str] | None = None, progress: bool = False,
                 log_format: str = "json") -> Report:
    """Start a daemon in `workdir` (logging in `log_format`), run the cases, check
    everything, stop it."""
    daemon = RouterDaemon(workdir, RULE_FILE, args=("--log-format", log_format)).start()
    report = Report(seed, Campaign(), log_format=log_format)
    try:
        todo = names or case_names(seed, pdus, datasets)

        def show(done: int) -> None:
            if progress and done % 500 == 0:
                print(f"  {done}/{len(todo)} cases", flush=True)

        campaign = run_cases(daemon, todo, workers, show)
        report.campaign = campaign
        accepted = {r.uid for r in campaign.results if r.outcome in ACCEPTED and r.uid}
        report.spool_leftovers = spool_leftovers(daemon, wait=3.0)
        echo = echoscu(daemon.port, timeout=20)
        report.echo_ok, report.echo_output = echo.returncode == 0, echo.stdout + echo.stderr
        report.stray_files = stray_files(daemon, accepted)
    finally:
        start = time.monotonic()
        report.exit_code = daemon.stop(timeout=STOP_TIMEOUT)
        report.stop_seconds = time.monotonic() - start
    log = daemon.log()
    report.tracebacks = tracebacks(log)
    report.exceptions = exception_counts(log)
    report.log_tail = log[-4000:]
    report.log_lines = len(log.splitlines())
    report.longest_line = max((len(line) for line in log.splitlines()), default=0)
    report.bad_lines = bad_lines(log, log_format)
    return report


COLUMNS = ("abort", "reject", "closed", "silent", "accepted", "survived", "0x0000",
           "warning", "0xA7xx", "0xA9xx", "0xC2xx", "other")


def summary(report: Report) -> str:
    """The per-kind table: count, outcomes, violations; then the daemon-wide checks."""
    rows: dict[str, Counter[str]] = defaultdict(Counter)
    for r in report.results:
        row = rows[f"{r.family}/{r.kind}"]
        row["n"] += 1
        row[r.outcome if r.outcome in COLUMNS else "other"] += 1
        row["invalid"] += r.invalid is not None
        row["violations"] += r.violation is not None
    head = ("kind", "n", "invalid", *COLUMNS, "violations")
    width = max(len(k) for k in [*rows, "kind"])
    lines = [f"{head[0]:<{width}} " + " ".join(f"{h:>8}" for h in head[1:])]
    for kind in sorted(rows):
        lines.append(f"{kind:<{width}} " + " ".join(f"{rows[kind][h]:>8}" for h in head[1:]))
    c = report.campaign
    violations = Counter(r.violation for r in report.results if r.violation)
    lines += [
        "",
        f"seed {report.seed}: {len(report.results)} cases in {c.seconds:.1f} s",
        f"RSS of daemon + children: idle {c.baseline_rss_kib / 1024:.0f} MiB, "
        f"peak {c.peak_rss_kib / 1024:.0f} MiB (VmHWM sum {c.hwm_kib / 1024:.0f} MiB), "
        f"limit idle + {RSS_GROWTH_LIMIT_KIB / 1024:.0f} MiB",
        f"daemon CPU {c.daemon_cpu_seconds:.1f} s",
        f"C-ECHO after the campaign: {'ok' if report.echo_ok else 'FAILED'}",
        f"SIGTERM afterwards: exit {report.exit_code} after {report.stop_seconds:.1f} s "
        f"(limit {STOP_LIMIT:.0f} s)",
        f"spool/incoming + spool/work leftovers: {len(report.spool_leftovers)}",
        f"stray or missing files in the store folder: {len(report.stray_files)}",
        f"tracebacks in the daemon's log: {len(report.tracebacks)}",
        *(f"  {n} x {what}" for what, n in report.exceptions.most_common()),
        f"log lines ({report.log_format}): {report.log_lines}, longest "
        f"{report.longest_line} characters",
        *(f"  {len(report.bad_lines.get(k, []))} {what}"
          + (f", e.g. {report.bad_lines[k][0][:200]!r}" if report.bad_lines.get(k) else "")
          for k, what in LOG_PROPERTIES.items()),
        "case violations: " + (", ".join(f"{k} {n}" for k, n in violations.items()) or "none"),
    ]
    for kind in sorted(violations):
        examples = [r for r in report.results if r.violation == kind][:5]
        lines.append(f"  {kind}: " + ", ".join(f"{r.name} ({r.kind}: {r.outcome}"
                                              f"{' ' + r.invalid if r.invalid else ''})"
                                              for r in examples))
    return "\n".join(lines)


def rss_growth_kib(report: Report) -> int:
    """How far the daemon tree's RSS rose above idle during the campaign."""
    return report.campaign.peak_rss_kib - report.campaign.baseline_rss_kib


def failed(report: Report) -> bool:
    """True when any property was violated."""
    return bool(
        any(r.violation for r in report.results) or not report.echo_ok
        or report.spool_leftovers or report.stray_files or report.tracebacks
        or rss_growth_kib(report) > RSS_GROWTH_LIMIT_KIB
        or report.exit_code != 0 or report.stop_seconds > STOP_LIMIT
        or any(report.bad_lines.values()) or report.longest_line > LONGEST_LINE
    )
