"""GDCM (python-gdcm) is loaded when the router first decodes with it, not at start-up.

pydicom imports every installed decoder library when it is imported itself, and GDCM's
library costs ~20 MiB of memory in each process (main, fork server, workers, forwarder),
although only the forwarder ever decodes with it, and only as the last fallback. So
`import router` puts this finder first: `import gdcm` fails (pydicom then counts GDCM as
absent) until `load()` is called by the decoder that needs it. Stdlib only: it runs
before anything else of the router's is imported.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any


class _Deferred:
    """A meta path finder that refuses `gdcm` (and its parts) while deferred."""

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        """Refuse GDCM's modules; for any other name, let the next finder answer."""
        if name == "gdcm" or name.startswith(("gdcm.", "_gdcm")):
            raise ModuleNotFoundError(f"{name} is loaded on first use", name=name)


_FINDER = _Deferred()


def defer() -> None:
    """Refuse `import gdcm` from now on, unless it is loaded already."""
    if "gdcm" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def installed() -> bool:
    """True when python-gdcm is installed, without loading it."""
    return importlib.machinery.PathFinder.find_spec("gdcm") is not None


def load() -> ModuleType:
    """GDCM's module, loaded now if it was deferred (ImportError when not installed)."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    return importlib.import_module("gdcm")
