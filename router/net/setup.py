"""pynetdicom's process-global switches, set once per process before any AE exists."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom.config
from pynetdicom import _config

from router.net import netlayer


def configure_pynetdicom(incoming: Path) -> None:
    """Set pynetdicom's process-global switches and our changes; call before any AE exists."""
    netlayer.install(incoming)
    # `--debug` (router.observe.logs.setup) set the root logger to DEBUG in this process.
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    # pynetdicom's standard handlers log the negotiation and every DIMSE message; bound to
    # every PDU and DIMSE message, they also take the AE-wide lock each time and turn off
    # router.net.netlayer's fast paths: only when debugging.
    _config.LOG_HANDLER_LEVEL = "standard" if debug else "none"
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True  # first proposed TS, any SOP class
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    # pydicom checks every value it decodes against its VR: CPU on the hot path for no
    # gain, as the identity UIDs are checked by us and other values are passed on as sent.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
