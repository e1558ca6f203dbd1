"""Webhook destinations: one JSON POST per completed series or study (`notify:`).

A `notify` action holds a delivery per instance, like a collected forward; when the unit
completes they are released together and this worker POSTs them as ONE request whose
body describes the unit (UIDs, counts per series and SOP class, calling AE, rule,
completion reason, first and last arrival), then settles every delivery alike: the
queue's retries, backoff and dead letters apply. No patient data is sent unless the
notify action lists it (`include`), read then from the first spooled file.
"""

from __future__ import annotations

import json
import ssl
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread

from router.config.actions import NotifyAction
from router.config.destinations import WebhookDestination
from router.destinations.dicom import Sent
from router.destinations.httpauth import Authorizer
from router.destinations.worker import QueueWorkers
from router.dicom.sopclass import sop_class_name
from router.errors import ForwardError, PermanentError, TransientError, Unreachable
from router.observe import metrics
from router.rules.ruleset import LoadedConfig
from router.spool.database import Spool
from router.spool.queue import Delivery
from router.spool.studies import Collected

BATCH = 16  # per-instance (late) notifications claimed at once
MAX_ANSWER = 64 * 1024  # bytes of a webhook's answer read, at most


class WebhookChannel:
    """An httpx client to one webhook, made at first use."""

    def __init__(self, dest: WebhookDestination, base_dir: Path) -> None:
        self.dest = dest
        self.auth = Authorizer(dest.webhook.auth, base_dir)
        self._ca = base_dir / dest.webhook.ca_certificates if dest.webhook.ca_certificates else None
        self._http: httpx.Client | None = None
        self.last_used = 0.0

    def post(self, body: dict[str, Any]) -> int:
        """POST `body` as JSON; the HTTP status. Unreachable / TransientError on failures."""
        headers = {**self.dest.webhook.headers, "Content-Type": "application/json"}
        if (authorization := self.auth.header()) is not None:
            headers["Authorization"] = authorization
        try:
            with self._client().stream(
                "POST", self.dest.webhook.url, content=json.dumps(body).encode(), headers=headers
            ) as response:
                for _ in response.iter_bytes(MAX_ANSWER):
                    break  # the answer's body is not used: read a little, never all
                return response.status_code
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
            raise Unreachable(f"cannot connect to {self.dest.webhook.url}: {exc}") from exc
        except (httpx.HTTPError, OSError) as exc:
            raise TransientError(f"POST to {self.dest.webhook.url} broke: {exc!r}") from exc
        finally:
            self.last_used = time.monotonic()

    def _client(self) -> httpx.Client:
        if self._http is None:
            verify: ssl.SSLContext | bool = True  # TLS is always verified
            if self._ca is not None:
                try:
                    verify = ssl.create_default_context(cafile=str(self._ca))
                except (OSError, ssl.SSLError) as exc:
                    raise Unreachable(f"cannot use ca_certificates {self._ca}: {exc}") from None
            self._http = httpx.Client(
                verify=verify,
                trust_env=False,
                timeout=httpx.Timeout(self.dest.webhook.timeout, connect=self.dest.connect_timeout),
                follow_redirects=False,
            )
        return self._http

    def close(self) -> None:
        """Close the client; the next POST makes another."""
        if self._http is not None:
            self._http.close()
            self._http = None


class WebhookWorkers(QueueWorkers[WebhookDestination, WebhookChannel]):
    """One thread POSTing a notification per completed unit (or per late instance)."""

    def __init__(
        self,
        name: str,
        dest: WebhookDestination,
        spool: Spool,
        loaded: LoadedConfig,
        parallel: int,
    ) -> None:
        super().__init__(name, dest, spool, loaded, parallel)
        self.base_dir = loaded.base_dir
        self.includes = _includes(loaded, name)

    def config_changed(self, loaded: LoadedConfig) -> None:
        """A reload: the rules' `include` lists may have changed."""
        self.includes = _includes(loaded, self.name)

    def open_channel(self) -> WebhookChannel:
        """A channel whose client is made at its first POST."""
        return WebhookChannel(self.dest, self.base_dir)

    def claim_limit(self) -> int:
        """A unit comes whole (`_unit_or_singles`); late instances a few at a time."""
        return BATCH

    def send_batch(self, channel: WebhookChannel, batch: list[Delivery]) -> None:
        """One POST for a completed unit; one per instance for late ones."""
        groups = [batch] if batch[0].batch is not None else [[d] for d in batch]
        for group in groups:
            if self.stopping:
                return
            if not self._notify(channel, group):
                return

    def _notify(self, channel: WebhookChannel, group: list[Delivery]) -> bool:
        """POST one notification and settle its deliveries; False when unreachable."""
        body = self.body(group)
        took = metrics.timer()
        try:
            status = channel.post(body)
        except Unreachable as exc:
            self.postpone(group, str(exc))
            return False
        except ForwardError as exc:
            self.reached()
            for d in group:
                self.settle(d, exc)
            return True
        self.reached()
        metrics.delivery_sent(self.name, 0, took())
        result: Sent | ForwardError
        if 200 <= status < 300:
            result = Sent(0, None)
        elif status in (408, 429) or status >= 500:
            result = TransientError(f"HTTP {status} from {self.dest.webhook.url}")
        else:
            result = PermanentError(f"HTTP {status} from {self.dest.webhook.url}")
        for d in group:
            self.settle(d, result)
        return True

    def body(self, group: list[Delivery]) -> dict[str, Any]:
        """The JSON body describing the unit (or the late instance) of `group`."""
        items = self.spool.units.deliveries_of(d.id for d in group)
        first = items[0]
        level = first.level or "study"
        uid = first.series_uid if level == "series" else first.study_uid
        unit = self.spool.units.unit(level, uid)
        per_series: dict[str, Counter[str]] = {}
        for item in items:
            per_series.setdefault(item.series_uid, Counter())[
                sop_class_name(item.sop_class_uid)
            ] += 1
        body: dict[str, Any] = {
            "event": f"{level}.complete",
            "level": level,
            "study_instance_uid": first.study_uid,
            "series_instance_uid": first.series_uid if level == "series" else None,
            "instances": len(items),
            "series": [
                {"series_instance_uid": s, "instances": sum(c.values()), "sop_classes": dict(c)}
                for s, c in per_series.items()
            ],
            "calling_ae": first.calling_ae,
            "rule": first.rule,
            "reason": unit.reason if unit else None,
            "late": group[0].batch is None,
            "first_arrival": _iso(min(i.received_at for i in items)),
            "last_arrival": _iso(max(i.received_at for i in items)),
        }
        body.update(self._patient_data(first))
        return body

    def _patient_data(self, item: Collected) -> dict[str, str]:
        """The keywords the notify action includes, read from the first spooled file."""
        wanted = self.includes.get(item.rule, ())
        if not wanted:
            return {}
        try:
            ds = dcmread(self.spool.path_of(item.object_id), stop_before_pixels=True,
                         specific_tags=list(wanted))  # fmt: skip
        except (OSError, ValueError):
            return {}
        return {k: str(ds.get(k, "")) for k in wanted}

    def close_if_idle(self, channel: WebhookChannel) -> None:
        """Close the client after idle_timeout without work."""
        if time.monotonic() - channel.last_used > self.dest.idle_timeout:
            channel.close()


def _includes(loaded: LoadedConfig, name: str) -> dict[str, tuple[str, ...]]:
    """Per rule: the patient data its notify actions to `name` include."""
    out: dict[str, tuple[str, ...]] = {}
    rules = [(r.name, r.actions) for r in loaded.config.rules]
    for rule, actions in [*rules, ("default", loaded.config.default)]:
        for action in actions:
            if isinstance(action, NotifyAction) and action.notify.to == name:
                out[rule] = tuple(action.notify.include)
    return out


def _iso(at: float) -> str:
    """Epoch seconds as UTC ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"
