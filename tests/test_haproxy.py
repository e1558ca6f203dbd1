"""Two routers behind the real HAProxy (Debian's package): the recipe of docs/deployment.md.

Senders bind 127.0.0.2 and 127.0.0.3; HAProxy connects to the routers from 127.0.0.1,
their only `listen.proxy_protocol.trusted` address, with a PROXY header naming the sender.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.daemon import RouterDaemon
from tests.dicomgen import make_ct
from tests.haproxy import Backend, HAProxy, haproxy_cfg
from tests.peers import free_port, pyn_rejected, pyn_store
from tests.test_forward import cli

pytestmark = pytest.mark.interop

DOCS = Path(__file__).resolve().parent.parent / "docs"
ROUTER = """\
version: 1
listen:
  ae_title: DICOM_ROUTER
  host: 127.0.0.1
  port: {port}
  proxy_protocol: {trusted: [127.0.0.1/32]}
metrics: {host: 127.0.0.1, port: METRICS}
spool_min_free: 1MiB
destinations:
  archive: {path: "archive/{SOPInstanceUID}.dcm"}
callers:
  - {ae_title: MODALITY, hosts: [127.0.0.2/32]}
default: [{store: archive}]
"""


def routers(tmp: Path) -> list[tuple[RouterDaemon, Backend]]:
    """Two routers, each with its metrics port (HAProxy's /readyz check)."""
    made = []
    for name in ("gw-1", "gw-2"):
        metrics = free_port()
        daemon = RouterDaemon(tmp / name, ROUTER.replace("METRICS", str(metrics))).start()
        made.append((daemon, Backend(name, "127.0.0.1", daemon.port, metrics)))
    return made


@pytest.fixture(scope="module", params=["send-proxy-v2", "send-proxy"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[HAProxy, list[RouterDaemon]]]:
    """HAProxy (PROXY v2, then v1) in front of two routers; all stopped by PID after."""
    tmp = tmp_path_factory.mktemp("haproxy")
    pairs: list[tuple[RouterDaemon, Backend]] = []
    balancer = None
    try:
        pairs = routers(tmp)
        balancer = HAProxy(tmp / "haproxy", free_port(), [b for _, b in pairs], request.param)
        yield balancer.start(), [d for d, _ in pairs]
    finally:
        if balancer is not None:
            balancer.stop()
        for daemon, _ in pairs:
            daemon.stop(timeout=5)


def ct(path: Path) -> Path:
    """A small CT instance at `path`."""
    make_ct(path, size=4096)
    return path


def holder(daemons: list[RouterDaemon], source: Path) -> RouterDaemon:
    """The router whose archive holds `source`'s instance (exactly one must)."""
    uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
    found = [d for d in daemons if (d.workdir / "archive" / f"{uid}.dcm").is_file()]
    assert len(found) == 1, f"{uid} on {len(found)} routers"
    return found[0]


def test_callers_admits_the_sender_its_hosts_name_through_the_balancer(
    fleet: tuple[HAProxy, list[RouterDaemon]], tmp_path: Path
) -> None:
    """MODALITY from 127.0.0.2 stores through HAProxy; trace shows MODALITY@127.0.0.2."""
    balancer, daemons = fleet
    source = ct(tmp_path / "ct.dcm")
    assert pyn_store(balancer.port, [source], calling="MODALITY", source="127.0.0.2") == [0]
    d = holder(daemons, source)
    study = str(dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    assert "from MODALITY@127.0.0.2 to DICOM_ROUTER" in cli(d, "trace", str(d.config_path), study)


def test_callers_refuses_the_other_sender_through_the_balancer(
    fleet: tuple[HAProxy, list[RouterDaemon]], tmp_path: Path
) -> None:
    """MODALITY from 127.0.0.3 is refused; the refusing router's log names 127.0.0.3."""
    balancer, daemons = fleet
    source = ct(tmp_path / "ct.dcm")
    pyn_rejected(balancer.port, [source], calling="MODALITY", source="127.0.0.3")
    line = "association from MODALITY@127.0.0.3 rejected: calling AE not in callers"
    assert any(line in d.log() for d in daemons)
    assert not any("MODALITY@127.0.0.1" in d.log() for d in daemons)


def test_balance_source_keeps_a_sender_on_one_router(
    fleet: tuple[HAProxy, list[RouterDaemon]], tmp_path: Path
) -> None:
    """Four associations from 127.0.0.2 all land on the same router."""
    balancer, daemons = fleet
    sources = [ct(tmp_path / f"ct{i}.dcm") for i in range(4)]
    for source in sources:
        assert pyn_store(balancer.port, [source], calling="MODALITY", source="127.0.0.2") == [0]
    assert len({holder(daemons, s).workdir for s in sources}) == 1


def test_the_deployment_recipe_is_the_configuration_the_tests_run() -> None:
    """docs/deployment.md's haproxy.cfg is `haproxy_cfg` for the recipe's addresses."""
    text = (DOCS / "deployment.md").read_text()
    shown = re.search(r"# /etc/haproxy/haproxy\.cfg\n(.*?)```", text, re.S)
    assert shown, "no haproxy.cfg block in docs/deployment.md"
    recipe = [Backend("gw-1", "10.0.0.11", 11112, 9110), Backend("gw-2", "10.0.0.12", 11112, 9110)]
    assert shown.group(1) == haproxy_cfg("0.0.0.0:104", recipe)
