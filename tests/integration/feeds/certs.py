"""A throw-away certificate authority for the TLS tests (the ``cryptography`` package).

Keys are EC P-256, certificates valid for a day, for 127.0.0.1 and localhost.
"""

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    #: key and chain in one file, as Kafka's PEM keystore reads it
    server_pem: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path
    other_client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("carwatch test CA", ca_key, _name("carwatch test CA"), ca_key, ca=True)
    other_ca_key = ec.generate_private_key(ec.SECP256R1())
    files: dict[str, bytes] = {"ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM)}
    for name, issuer, issuer_key, server in (
        ("server", ca_cert.subject, ca_key, True),
        ("client", ca_cert.subject, ca_key, False),
        ("other-client", _name("another CA"), other_ca_key, False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"carwatch {name}", key, issuer, issuer_key, server=server)
        files[f"{name}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{name}.key"] = _key_pem(key)
    files["server.pem"] = files["server.key"] + files["server.crt"]
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        server_pem=folder / "server.pem",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
        other_client_cert=folder / "other-client.crt",
        other_client_key=folder / "other-client.key",
    )
