"""Throw-away certificates for TLS tests: a CA, server and client certificates.

Uses ``cryptography`` (a dev dependency only). Keys are ECDSA P-256: quick to make, and
both mosquitto (OpenSSL) and Python's ssl accept them. Every file is PEM; private keys
are written with mode 0600, unencrypted unless a passphrase is given.

    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue_server("broker", hosts=["127.0.0.1", "localhost"])
    client = ca.issue_client("agent-01")          # CN is the identity
    # ca.cert, server.cert, server.key, client.cert, client.key are Paths
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "IssuedCert"]

_VALIDITY = dt.timedelta(days=2)
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path
    common_name: str


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Derrick tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, passphrase: str | None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class CertificateAuthority:
    """A self-signed CA in ``directory`` (``<name>-ca.pem``, ``<name>-ca.key``) that
    issues server and client certificates into the same directory."""

    def __init__(self, directory: str | os.PathLike[str], name: str = "derrick-test") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = _name(f"{name} CA")
        self._subject = subject
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        #: The CA certificate: what clients put in ``tls.ca_file`` and brokers in ``cafile``.
        self.cert = self.dir / f"{name}-ca.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self.key = self.dir / f"{name}-ca.key"
        _write_key(self.key, self._key, None)

    def issue_server(
        self, common_name: str = "broker", hosts: Iterable[str] = ("127.0.0.1", "localhost")
    ) -> IssuedCert:
        """A server certificate naming ``hosts`` (IP addresses or DNS names) in its SAN."""
        names = [_san(host) for host in hosts]
        return self._issue(
            common_name, ExtendedKeyUsageOID.SERVER_AUTH, x509.SubjectAlternativeName(names)
        )

    def issue_client(self, common_name: str, *, passphrase: str | None = None) -> IssuedCert:
        """A client certificate; mosquitto's ``use_identity_as_username`` takes the CN."""
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, None, passphrase)

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        san: x509.SubjectAlternativeName | None,
        passphrase: str | None = None,
    ) -> IssuedCert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        stem = f"{self.name}-{common_name}"
        cert_path = self.dir / f"{stem}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = self.dir / f"{stem}.key"
        _write_key(key_path, key, passphrase)
        return IssuedCert(cert_path, key_path, common_name)
