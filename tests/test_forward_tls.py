"""Forwarding over TLS (`destinations.NAME.tls`) to DCMTK's `storescp +tls`.

The CA, the PACS's server certificate (localhost, 127.0.0.1) and the router's client
certificate are made by each test (tests/certs.py). A certificate that does not verify
(wrong CA, wrong name) keeps the delivery pending with the reason in `queue` and the log,
within seconds: it never hangs, and the attempts are not counted (like any unreachable
destination). `verify: false` accepts any certificate, and `check` warns about it.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from router.config.destinations import DestinationTLS
from router.errors import ConfigError
from router.net.tls import BCP195_CIPHERS, client_context
from router.rules.ruleset import load
from tests.certs import CA, Pair
from tests.daemon import DICOM_ROUTER
from tests.peers import StoreSCP
from tests.test_forward import (
    Router,
    dest,
    one_instance,
    queue_list,
    rule_file,
    send,
    states,
    wait_until,
)

pytestmark = pytest.mark.interop


class PKI:
    """A CA with a server and a client certificate, and a second, unrelated CA."""

    def __init__(self, folder: Path) -> None:
        self.ca = CA(folder / "ca")
        self.server = self.ca.issue("server", "pacs.test", server=True)
        self.client = self.ca.issue("client", "dicom-router", server=False)
        self.other_ca = CA(folder / "other", name="some other CA")


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    """Certificates for this test."""
    return PKI(tmp_path / "pki")


def tls_pacs(folder: Path, server: Pair, *, client_ca: Path | None = None) -> StoreSCP:
    """storescp +tls with `server`; with `client_ca` it requires a client certificate."""
    extra = ["+tls", str(server.private_key), str(server.certificate), "-pw"]
    extra += ["+cf", str(client_ca), "-rc"] if client_ca else ["-ic"]
    return StoreSCP(folder, ae_title="TLSPACS", extra=extra).start()


def tls_yaml(**fields: str | Path | bool) -> str:
    """A `tls:` flow mapping (paths quoted, booleans as YAML booleans)."""
    items = [
        f"{k}: {str(v).lower()}" if isinstance(v, bool) else f"{k}: '{v}'"
        for k, v in fields.items()
    ]
    return "{" + ", ".join(items) + "}"


def test_delivers_over_tls_with_a_client_certificate(
    router: Router, pki: PKI, tmp_path: Path
) -> None:
    """A PACS that requires a client certificate from our CA: delivered."""
    pacs = tls_pacs(tmp_path / "pacs", pki.server, client_ca=pki.ca.pem)
    try:
        tls = tls_yaml(
            ca_certificates=pki.ca.pem,
            certificate=pki.client.certificate,
            private_key=pki.client.private_key,
            server_name="pacs.test",
        )
        d = router(rule_file({"pacs": dest("TLSPACS", pacs.port, tls=tls)}, ["forward: pacs"]))
        path, _ = one_instance(tmp_path)
        assert send(d, [path]) == [0]
        wait_until("delivered", lambda: states(d, "pacs") == ["delivered"])
        # storescp notes a reception after it has answered: wait for the note too.
        assert pacs.wait_count(1) == 1
    finally:
        pacs.stop()


def test_server_name_defaults_to_the_host(router: Router, pki: PKI, tmp_path: Path) -> None:
    """No server_name: the certificate must name the host (127.0.0.1, in its SAN)."""
    pacs = tls_pacs(tmp_path / "pacs", pki.server)
    try:
        tls = tls_yaml(ca_certificates=pki.ca.pem)
        d = router(rule_file({"pacs": dest("TLSPACS", pacs.port, tls=tls)}, ["forward: pacs"]))
        path, _ = one_instance(tmp_path)
        assert send(d, [path]) == [0]
        wait_until("delivered", lambda: states(d, "pacs") == ["delivered"])
    finally:
        pacs.stop()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-ca", "certificate verify failed: unable to get local issuer certificate"),
        ("wrong-name", "certificate verify failed: Hostname mismatch"),
    ],
)
def test_a_certificate_that_does_not_verify_is_retried_with_the_reason(
    router: Router, pki: PKI, tmp_path: Path, case: str, reason: str
) -> None:
    """Wrong CA, or a server_name the certificate does not carry: the delivery stays
    pending, its attempts not counted, with the TLS reason in `queue` and the log; the
    PACS receives nothing."""
    pacs = tls_pacs(tmp_path / "pacs", pki.server)
    try:
        if case == "wrong-ca":
            tls = tls_yaml(ca_certificates=pki.other_ca.pem)
        else:
            tls = tls_yaml(ca_certificates=pki.ca.pem, server_name="not-the-pacs.test")
        d = router(rule_file({"pacs": dest("TLSPACS", pacs.port, tls=tls)}, ["forward: pacs"]))
        path, uid = one_instance(tmp_path)
        assert send(d, [path]) == [0]
        d.wait_log(reason, timeout=10)
        rows = wait_until("the error in queue", lambda: [r for r in queue_list(d)[0] if r.error])
        assert [(r.uid, r.state, r.tries) for r in rows] == [(uid, "pending", 0)]
        assert f"no association by TLSPACS@127.0.0.1:{pacs.port} (TLS: {reason}" in rows[0].error
        assert pacs.count() == 0
    finally:
        pacs.stop()


def test_sync_forward_to_a_pacs_whose_certificate_fails_answers_0xa700(
    router: Router, pki: PKI, tmp_path: Path
) -> None:
    """mode: sync and a wrong CA: the sender gets 0xA700 at once, not after a timeout."""
    pacs = tls_pacs(tmp_path / "pacs", pki.server)
    try:
        tls = tls_yaml(ca_certificates=pki.other_ca.pem)
        d = router(
            rule_file(
                {"pacs": dest("TLSPACS", pacs.port, tls=tls)}, ["forward: {to: pacs, mode: sync}"]
            )
        )
        path, _ = one_instance(tmp_path)
        assert send(d, [path]) == [0xA700]
        assert "certificate verify failed" in d.log()
    finally:
        pacs.stop()


def test_verify_false_accepts_any_certificate_and_check_warns(
    router: Router, pki: PKI, tmp_path: Path
) -> None:
    """verify: false delivers to a PACS whose CA we do not know; `check` warns."""
    pacs = tls_pacs(tmp_path / "pacs", pki.server)
    try:
        tls = tls_yaml(ca_certificates=pki.other_ca.pem, verify=False)
        d = router(rule_file({"pacs": dest("TLSPACS", pacs.port, tls=tls)}, ["forward: pacs"]))
        path, _ = one_instance(tmp_path)
        assert send(d, [path]) == [0]
        wait_until("delivered", lambda: states(d, "pacs") == ["delivered"])
        done = subprocess.run(
            [DICOM_ROUTER, "check", d.config_path], capture_output=True, text=True, check=True
        )
        assert "destinations.pacs.tls.verify: false" in done.stdout, done.stdout
        assert f"DICOM TLSPACS@127.0.0.1:{pacs.port} TLS (not verified)" in done.stdout
    finally:
        pacs.stop()


def test_client_context_is_tls12_or_later_with_bcp195_suites_only(pki: PKI) -> None:
    """TLS 1.2 minimum; the TLS 1.2 suites offered are BCP 195's, all ECDHE/DHE + AES-GCM."""
    ctx = client_context(DestinationTLS(ca_certificates=str(pki.ca.pem)), Path)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and tls12 <= set(BCP195_CIPHERS.split(":")), tls12


def test_a_missing_key_file_is_reported_as_unreachable_with_the_file(
    router: Router, pki: PKI, tmp_path: Path
) -> None:
    """A client key that is not there: the delivery waits, and says which file."""
    tls = tls_yaml(
        ca_certificates=pki.ca.pem,
        certificate=pki.client.certificate,
        private_key=tmp_path / "missing.key",
    )
    d = router(rule_file({"pacs": dest("TLSPACS", 9, tls=tls)}, ["forward: pacs"]))
    path, _ = one_instance(tmp_path)
    assert send(d, [path]) == [0]
    rows = wait_until("the error in queue", lambda: [r for r in queue_list(d)[0] if r.error])
    assert "tls:" in rows[0].error and "No such file" in rows[0].error, rows[0].error


def test_a_client_certificate_without_its_key_is_a_config_error(tmp_path: Path) -> None:
    """`certificate` without `private_key`: the rule file does not load, and says so."""
    path = tmp_path / "router.yaml"
    path.write_text(
        "version: 1\n"
        "listen: {ae_title: ROUTER}\n"
        "destinations:\n"
        "  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104, tls: {certificate: c.pem}}\n"
        "default: [forward: pacs]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(path)
    (problem,) = caught.value.problems
    assert "destinations.pacs" in str(problem) and "tls" in str(problem), str(problem)
    assert "write both certificate and private_key, or neither" in str(problem)
