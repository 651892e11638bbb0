"""Development certificates for mutual TLS: a local CA, the server and one client per agency.

The certificate names the agency (CN) and its role (OU); production deployments bring
their own CA and issue the same kind of certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEV_CLIENTS = {
    "dev-unit": "management_unit",
    "dev-unit-2": "management_unit",
    "dev-police": "police",
    "dev-auditor": "auditor",
}


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


def _name(cn: str, ou: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "psvis"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write(
    folder: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> Identity:
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.crt"
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(cert_path, key_path)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    hosts: tuple[str, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def ensure_dev_pki(folder: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Path:
    """Create the CA, server and dev client certificates once; later calls reuse them."""
    if (folder / "ca.crt").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("psvis development CA", "ca")
    _write(folder, "ca", ca_key, _issue(ca_name, ca_key, ca_name, ca_key, ca=True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(_name("psvis-server", "platform"), server_key, ca_name, ca_key, hosts=hosts)
    _write(folder, "server", server_key, server)
    for agency, role in DEV_CLIENTS.items():
        issue_client(folder, agency, role, ca_key=ca_key)
    return folder


def issue_client(
    folder: Path, agency: str, role: str, *, ca_key: ec.EllipticCurvePrivateKey | None = None
) -> Identity:
    """A client certificate for an agency acting in a role, signed by the folder's CA.

    TlsFileError names a CA file that is missing, unreadable or not PEM."""
    if ca_key is None:
        loaded = serialization.load_pem_private_key(pem_private_key(folder / "ca.key"), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    ca_cert = x509.load_pem_x509_certificate(pem_certificates(folder / "ca.crt"))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(_name(agency, role), key, ca_cert.subject, ca_key)
    return _write(folder, agency, key, cert)


def identity(folder: Path, name: str) -> Identity:
    return Identity(folder / f"{name}.crt", folder / f"{name}.key")


class TlsFileError(ValueError):
    """A certificate or key file that mutual TLS cannot use: missing, unreadable or not PEM.

    The message names the file and what is wrong with it; `missing` says which of these it is
    (a client suggests where the files come from).
    """

    def __init__(self, path: Path, problem: str, *, missing: bool = False) -> None:
        super().__init__(f"{path} {problem}")
        self.path, self.missing = path, missing


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsFileError(path, "is missing", missing=True) from None
    except OSError as e:
        raise TlsFileError(path, f"cannot be read: {e.strerror or e}") from None


def pem_certificates(path: Path) -> bytes:
    """The file's bytes, which must hold PEM certificates (one, or a chain).

    TlsFileError naming the file otherwise: gRPC would take the bytes and fail later, saying
    something about the network ("empty address list", "failed to bind").
    """
    data = _read(path)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsFileError(path, "is not a valid PEM certificate") from None
    return data


def pem_private_key(path: Path) -> bytes:
    """The file's bytes, which must hold an unencrypted PEM private key (else TlsFileError)."""
    data = _read(path)
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: gRPC takes no password
        raise TlsFileError(path, "is an encrypted private key; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(path, "is not a valid PEM private key") from None
    return data
