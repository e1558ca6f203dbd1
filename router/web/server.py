"""The status pages as a WSGI app, for the exporter's non-metrics paths.

Bounded apart from /metrics: at most PAGE_SLOTS requests are read and rendered at once
(more get 503 at once), so a slow page or a slow client of a page holds a page slot, never
the scrape. Every page needs a login when a users file is configured; actions are POST
with the CSRF token of the user's forms, by an admin, and logged with the user's name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from router.errors import BadRequest
from router.observe.exporter import Monitored
from router.spool.database import Spool
from router.web import actions
from router.web.auth import Csrf, User, Users
from router.web.panels import BY_PATH, PANELS
from router.web.render import environment
from router.web.views import Context

log = logging.getLogger("router.web")

PAGE_SLOTS = 2  # pages rendered at once; the exporter's other slots stay for /metrics
MAX_BODY = 4096  # a form of ours is a few hundred bytes
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
STATIC = {"style.css": "text/css", "refresh.js": "text/javascript"}

Start = Callable[..., Any]


class Pages:
    """The WSGI app of the status pages."""

    def __init__(
        self,
        daemon: Monitored,
        users_file: Path | None,
        workers: int,
        token_file: Path | None = None,
    ) -> None:
        self._daemon = daemon
        self._workers = workers
        self._users = Users(users_file, token_file)
        self._csrf = Csrf()
        self._slots = threading.BoundedSemaphore(PAGE_SLOTS)
        self._env = environment()
        self._spool: Spool | None = None
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start: Start) -> Iterable[bytes]:
        """One request: 503 when every page slot is taken."""
        if not self._slots.acquire(blocking=False):
            return _text(start, "503 Service Unavailable", "status pages busy, try again")
        try:
            return self._serve(environ, start)
        except Exception as exc:  # one line, and the endpoint serves on
            log.warning(
                "status page %s failed: %s: %s", environ.get("PATH_INFO"), type(exc).__name__, exc
            )
            return _text(start, "500 Internal Server Error", "page failed: see the log")
        finally:
            self._slots.release()

    def spool(self) -> Spool:
        """The spool, opened at the first page."""
        with self._lock:
            if self._spool is None:
                self._spool = Spool(self._daemon.current().spool)
            return self._spool

    def _serve(self, environ: dict[str, Any], start: Start) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/static/") and path[8:] in STATIC:
            body = resources.files("router.web").joinpath("static", path[8:]).read_bytes()
            start("200 OK", [("Content-Type", STATIC[path[8:]]), ("Cache-Control", "max-age=300")])
            return [body]
        user = self._users.login(environ.get("HTTP_AUTHORIZATION"))
        if user is None:
            start(
                "401 Unauthorized",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    *(("WWW-Authenticate", scheme) for scheme in self._users.schemes),
                ],
            )
            return [b"login required\n"]
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "POST" and path in actions.ACTIONS:
            return self._act(environ, start, user, path)
        panel = BY_PATH.get(path)
        if panel is None or method not in ("GET", "HEAD"):
            return _text(start, "404 Not Found", "no such page: try /")
        query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        values = panel.view(Context(self._daemon, self.spool(), self._workers), query)
        html = self._env.get_template(panel.template).render(
            **values,
            panels=PANELS,
            panel=panel,
            user=user,
            csrf=self._csrf.token(user),
            done=query.get("done", ""),
            fragment=query.get("fragment") == "1",
        )
        start(
            "200 OK",
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Cache-Control", "no-store"),
                ("Content-Security-Policy", CSP),
                ("X-Frame-Options", "DENY"),
            ],
        )
        return [html.encode()]

    def _act(self, environ: dict[str, Any], start: Start, user: User, path: str) -> list[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return _text(start, "413 Content Too Large", f"a form is at most {MAX_BODY} bytes")
        form = dict(parse_qsl(environ["wsgi.input"].read(length).decode("utf-8", "replace")))
        # A bearer token is sent by its script alone, never added by a browser on its own,
        # so a forged cross-site form cannot carry it: CSRF guards the basic logins.
        if not user.bearer and not self._csrf.valid(user, form.get("csrf")):
            log.warning(
                "status page: %s refused for %s: missing or wrong CSRF token", path, user.name
            )
            return _text(start, "403 Forbidden", "missing or wrong CSRF token: reload the page")
        if not user.admin:
            log.warning("status page: %s refused for %s: role read", path, user.name)
            return _text(start, "403 Forbidden", f"{user.name} may only look (role read)")
        try:
            ctx = Context(self._daemon, self.spool(), self._workers)
            done = actions.ACTIONS[path](ctx, form, user.name)
        except BadRequest as exc:
            log.warning("status page: %s refused for %s: %s", path, user.name, exc)
            return _text(start, "400 Bad Request", str(exc))
        log.info(
            "status page: %s by %s: %s",
            path,
            user.name,
            done,
            extra={"event": "page-action", "user": user.name},
        )
        back = form.get("back", "/")
        back = back if back in BY_PATH else "/"
        start(
            "303 See Other",
            [
                ("Location", f"{back}?{urlencode({'done': done})}"),
                ("Content-Type", "text/plain; charset=utf-8"),
            ],
        )
        return [done.encode() + b"\n"]


def _text(start: Start, code: str, body: str) -> list[bytes]:
    start(code, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode() + b"\n"]
