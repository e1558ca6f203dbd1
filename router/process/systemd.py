"""The sd_notify protocol, spoken by hand (no python-systemd dependency).

Owns: telling systemd about the daemon's state (READY, RELOADING, STATUS, WATCHDOG,
STOPPING) through the datagram socket named by `$NOTIFY_SOCKET`. Without that
variable (not under systemd, or Type= other than notify) every method does nothing.

Only the main process notifies (the unit says NotifyAccess=main): once the Notifier has
read the variables, `Notifier.unset_environment(os.environ)` keeps children from notifying.
A failed send is logged at debug level and otherwise ignored: systemd's status must
never take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("router.systemd")  # user-visible in the journal: not the module path

#: the variables systemd sets for the notify protocol; children must not inherit them
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
#: a send never blocks the main loop longer than this, even if PID 1 is not reading
SEND_TIMEOUT_S = 1.0


def _address(value: str | None) -> str | None:
    """The AF_UNIX address for a `$NOTIFY_SOCKET` value, or None if unusable."""
    if not value:
        return None
    if value.startswith("@"):  # an abstract socket: a leading NUL on the wire
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.debug("NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying", value)
    return None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout in seconds, if the watchdog is meant for this process."""
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def _clean(text: str) -> str:
    """One line of status text: a newline would start a new VARIABLE= assignment."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify messages to systemd; a no-op when `$NOTIFY_SOCKET` is unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET"))
        self.enabled: bool = self._address is not None
        #: how often to call `watchdog()` (seconds), or None when no watchdog is armed
        self.watchdog_interval: float | None = _watchdog_interval(env) if self.enabled else None

    @staticmethod
    def unset_environment(environ: MutableMapping[str, str]) -> None:
        """Drop the notify variables (as sd_notify's unset_environment): children inherit none."""
        for name in NOTIFY_VARIABLES:
            environ.pop(name, None)

    def ready(self, status: str | None = None) -> None:
        """The listener is bound and the spool recovered (also: a reload is done)."""
        self._send("READY=1" if status is None else f"READY=1\nSTATUS={_clean(status)}")

    def reloading(self) -> None:
        """A reload starts; call `ready()` when it ends, whether it succeeded or not."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def status(self, text: str) -> None:
        """A one-line free-form status, shown by `systemctl status`."""
        self._send(f"STATUS={_clean(text)}")

    def watchdog(self) -> None:
        """The main loop is alive; call every `watchdog_interval` seconds."""
        if self.watchdog_interval is not None:
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun (draining in-flight C-STOREs)."""
        self._send("STOPPING=1")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", message.split("\n", 1)[0], exc)
