"""The SSRF guard refuses every address inside the walls, after resolution and through redirects,
and connects to the address it checked."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from outbound import client, ssrf
from testsupport.fakes.webhook_receiver import WebhookReceiver

LOOPBACK_ONLY = ssrf.parse_networks(["127.0.0.1/32"])


def resolving_to(*addresses: str) -> Any:
    """A DNS answer we choose, as getaddrinfo gives it."""
    calls: list[str] = []

    def resolve(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        calls.append(host)
        family = socket.AF_INET6 if ":" in addresses[0] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


BLOCKED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared (CGNAT)
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "2002:7f00:1::1",  # 6to4 around 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
]


@pytest.mark.parametrize("address", BLOCKED)
def test_a_name_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    with pytest.raises(ssrf.DestinationRefused, match=ssrf.UNREACHABLE_NAME):
        ssrf.check_url("https://hooks.example.com/x", resolver=resolving_to(address))


def test_an_internal_name_and_a_missing_name_are_refused_alike() -> None:
    """A customer who registers ``https://db.internal/`` learns nothing from the delivery log
    that ``https://no-such-name.invalid/`` would not also tell them."""

    def missing(*_: Any, **__: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    refusals = []

    def nothing(*_: Any, **__: Any) -> list[Any]:
        return []

    for resolver in (resolving_to("10.0.0.7"), missing, nothing):
        with pytest.raises(ssrf.DestinationRefused) as refused:
            ssrf.check_url("https://db.internal/x", resolver=resolver)
        refusals.append(str(refused.value))
    assert len(set(refusals)) == 1 and "db.internal" not in refusals[0]


@pytest.mark.parametrize("address", BLOCKED)
def test_a_non_public_address_literal_is_refused_without_dns(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ssrf.DestinationRefused):
        ssrf.check_url_form(f"https://{host}/hook")


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    destination = ssrf.check_url("https://hooks.example.com:8443/a?b=1", resolver=resolving_to(address))
    assert destination.addresses == (address,)
    assert (destination.host, destination.port, destination.target) == ("hooks.example.com", 8443, "/a?b=1")


def test_one_private_answer_among_public_ones_refuses_the_name() -> None:
    with pytest.raises(ssrf.DestinationRefused):
        ssrf.check_url("https://hooks.example.com/", resolver=resolving_to("93.184.215.14", "10.0.0.5"))


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/", "gopher://example.com/", "https://user:pw@example.com/", "//x"]
)
def test_other_schemes_and_credentials_are_refused(url: str) -> None:
    with pytest.raises(ssrf.DestinationRefused):
        ssrf.check_url_form(url)


def test_localhost_is_refused_at_registration_unless_a_network_is_allowed() -> None:
    with pytest.raises(ssrf.DestinationRefused):
        ssrf.check_url_form("http://localhost:8000/hook")
    ssrf.check_url_form("http://localhost:8000/hook", allowed_networks=LOOPBACK_ONLY)


def test_the_allowed_networks_setting_lets_only_those_networks_through() -> None:
    ssrf.check_url("http://hooks.test/", allowed_networks=LOOPBACK_ONLY, resolver=resolving_to("127.0.0.1"))
    with pytest.raises(ssrf.DestinationRefused):
        ssrf.check_url("http://hooks.test/", allowed_networks=LOOPBACK_ONLY, resolver=resolving_to("127.0.0.2"))


def test_a_loopback_receiver_is_refused_before_any_byte_is_sent() -> None:
    with WebhookReceiver() as receiver, pytest.raises(ssrf.DestinationRefused):
        client.post(receiver.url(), body=b"{}", headers={})
    assert receiver.received == []


def test_the_request_goes_to_the_checked_address_with_the_urls_host() -> None:
    # A rebinding DNS answers 127.0.0.1 to the check and 10.0.0.1 to any later lookup: there is
    # no later lookup, the connection goes to the address that was checked.
    answers = iter(["127.0.0.1", "10.0.0.1"])
    looked_up: list[str] = []

    def rebinding(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    with WebhookReceiver() as receiver:
        url = receiver.url(host="hooks.customer.test")
        response = client.post(
            url, body=b'{"a":1}', headers={"X-Test": "1"}, allowed_networks=LOOPBACK_ONLY, resolver=rebinding
        )
    assert response.status == 200
    assert looked_up == ["hooks.customer.test"]
    (received,) = receiver.received
    assert received.headers["host"] == f"hooks.customer.test:{receiver.port}"
    assert received.body == b'{"a":1}'


def test_a_redirect_is_followed_after_the_same_check() -> None:
    with WebhookReceiver() as receiver:
        receiver.redirects["/old"] = "/new"
        response = client.post(
            receiver.url("/old"), body=b"signed", headers={"webhook-id": "msg_1"}, allowed_networks=LOOPBACK_ONLY
        )
    assert response.status == 200
    assert response.url.endswith("/new")
    assert [(r.path, r.body, r.headers["webhook-id"]) for r in receiver.received] == [
        ("/old", b"signed", "msg_1"),
        ("/new", b"signed", "msg_1"),
    ]


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://127.0.0.2:{port}/inside",  # loopback, but outside the allowed 127.0.0.1/32
        "file:///etc/passwd",
    ],
)
def test_a_redirect_to_a_private_target_is_refused(location: str) -> None:
    with WebhookReceiver() as receiver:
        receiver.redirects["/hook"] = location.format(port=receiver.port)
        with pytest.raises(ssrf.DestinationRefused):
            client.post(receiver.url(), body=b"{}", headers={}, allowed_networks=LOOPBACK_ONLY)
    assert [r.path for r in receiver.received] == ["/hook"]


def test_redirects_are_bounded() -> None:
    with WebhookReceiver() as receiver:
        receiver.redirects.update({"/a": "/b", "/b": "/a"})
        with pytest.raises(client.RequestFailed, match="redirects"):
            client.post(receiver.url("/a"), body=b"{}", headers={}, allowed_networks=LOOPBACK_ONLY, max_redirects=3)
    assert len(receiver.received) == 4


def test_a_closed_port_is_a_failed_request_not_an_exception_of_another_kind() -> None:
    with WebhookReceiver() as receiver:
        url = receiver.url()
    with pytest.raises(client.RequestFailed):
        client.post(url, body=b"{}", headers={}, allowed_networks=LOOPBACK_ONLY, timeout=2)


def test_a_receiver_dripping_its_answer_is_cut_off_at_the_timeout_not_per_read() -> None:
    """A byte every 0.2 s satisfies any per-read timeout; the whole exchange is what is bounded."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sent = []

    def drip() -> None:
        peer, _ = listener.accept()
        with peer:
            peer.recv(65536)
            peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            try:
                for _ in range(1000):
                    peer.sendall(b"x")
                    sent.append(1)
                    time.sleep(0.2)
            except OSError:
                pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    with listener, pytest.raises(client.RequestFailed, match="Timed out"):
        client.post(f"http://127.0.0.1:{port}/hook", body=b"{}", headers={}, allowed_networks=LOOPBACK_ONLY, timeout=1)
    dripper.join(timeout=30)
    assert not dripper.is_alive()
    assert len(sent) < 1000  # cut off, not read to the end


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name``, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_https_goes_to_the_checked_address_with_sni_and_the_certificate_checked_for_the_name(tmp_path: Path) -> None:
    cert_file, key_file = _certificate(tmp_path, "hooks.customer.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_file, key_file)
    names_asked: list[str | None] = []

    def remember_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        names_asked.append(name)

    server_tls.sni_callback = remember_sni  # type: ignore[assignment]
    trusting = ssl.create_default_context(cafile=str(cert_file))
    with WebhookReceiver(tls=server_tls) as receiver:
        response = client.post(
            receiver.url(host="hooks.customer.test"),
            body=b"{}",
            headers={},
            allowed_networks=LOOPBACK_ONLY,
            resolver=resolving_to("127.0.0.1"),
            tls_context=trusting,
        )
        assert response.status == 200
        assert names_asked == ["hooks.customer.test"]
        assert receiver.received[0].headers["host"] == f"hooks.customer.test:{receiver.port}"
        # The same server under another name: the certificate does not match, nothing is sent.
        with pytest.raises(client.RequestFailed, match="SSLCertVerificationError"):
            client.post(
                receiver.url(host="other.customer.test"),
                body=b"{}",
                headers={},
                allowed_networks=LOOPBACK_ONLY,
                resolver=resolving_to("127.0.0.1"),
                tls_context=trusting,
            )
    assert len(receiver.received) == 1
