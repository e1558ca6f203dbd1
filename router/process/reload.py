"""Watching the rule file so that a saved edit applies within a second.

Editors save by writing a new file and renaming it over the old one, which drops an
inotify watch on the file itself; so the folder is watched and events are filtered to
the rule file's name (and Kubernetes' `..data` symlink swap). The watcher only signals;
the daemon's main loop loads, validates and swaps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from watchfiles import watch

log = logging.getLogger("router.reload")


class RuleFileWatcher:
    """A daemon thread calling `on_change()` after the rule file changed on disk."""

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self._path = path.resolve()
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rule-watcher", daemon=True)

    def start(self) -> None:
        """Begin watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop within ~50 ms."""
        self._stop.set()
        self._thread.join(timeout=2)

    def _wanted(self, _change: object, path: str) -> bool:
        name = Path(path).name
        return name == self._path.name or name == "..data"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for _changes in watch(
                    self._path.parent,
                    watch_filter=self._wanted,
                    debounce=300,  # an editor's write+rename settles well within this
                    step=50,
                    stop_event=self._stop,
                    recursive=False,
                    raise_interrupt=False,
                ):
                    self._on_change()
            except Exception as exc:  # the backend can fail (folder removed...): retry
                log.warning("watching %s failed (%s); retrying in 1 s", self._path.parent, exc)
                self._stop.wait(1.0)
