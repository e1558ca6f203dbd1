"""A bare pynetdicom Storage SCP (chunked receive, logging off, TCP_NODELAY): the floor.

    python bench/bare_scp.py PORT [--netlayer DIR]

It answers 0x0000 to every C-STORE and keeps nothing: what pynetdicom itself costs,
without rules, header reads, fsync or logs. The store benchmark measures it beside the
router so the router's own overhead shows. With `--netlayer DIR`, router/netlayer's
changes are installed first (received files go to DIR and are removed after the answer):
the gain of those changes alone.
"""

from __future__ import annotations

import socket
import sys

from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def _nodelay(event: Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main() -> None:
    if "--netlayer" in sys.argv:
        from pathlib import Path

        from router import netlayer

        netlayer.install(Path(sys.argv[sys.argv.index("--netlayer") + 1]))
    _config.LOG_HANDLER_LEVEL = "none"
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 262144
    ae.add_supported_context(Verification)
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_CONN_OPEN, _nodelay)]
    ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=handlers)


if __name__ == "__main__":
    main()
