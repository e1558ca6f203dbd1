"""A bare pynetdicom Storage SCP (chunked receive, logging off, TCP_NODELAY): the floor.

    python bench/bare_scp.py PORT [--netlayer DIR [--durable]]

It answers 0x0000 to every C-STORE and keeps nothing: what pynetdicom itself costs,
without rules, header reads, fsync or logs. The store benchmark measures it beside the
router so the router's own overhead shows. With `--netlayer DIR`, router/netlayer's
changes are installed first (received files go to DIR and are removed after the answer):
the gain of those changes alone. With `--durable` as well, each received file is made
durable as the router makes a stored one before answering (fsync of the file, a hard
link into DIR/kept/, fsync of that folder) and nothing else is done: the floor of a
durable Python receiver on this disk, against which the router's own work shows.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def _nodelay(event: Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _durable(event: Event) -> int:
    path = Path(event.dataset_path)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    kept = path.parent / "kept"
    os.link(path, kept / path.name)
    fd = os.open(kept, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
    return 0x0000


def main() -> None:
    store: Any = lambda event: 0x0000  # noqa: E731
    if "--netlayer" in sys.argv:
        from router.net import netlayer

        incoming = Path(sys.argv[sys.argv.index("--netlayer") + 1])
        netlayer.install(incoming)
        if "--durable" in sys.argv:
            (incoming / "kept").mkdir(exist_ok=True)
            store = _durable
    _config.LOG_HANDLER_LEVEL = "none"
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 262144
    ae.add_supported_context(Verification)
    handlers = [(evt.EVT_C_STORE, store), (evt.EVT_CONN_OPEN, _nodelay)]
    ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=handlers)


if __name__ == "__main__":
    main()
