"""The per-box certificate authority that lets the proxy read requests to a secret's hosts.

Made only for boxes that declare secrets (BoxLite does the same): its certificate goes
into the guest's trust store, its key never leaves the host (the box's folder, 0600).
Leaf certificates are made on demand, one per host name, backdated a day so that a
guest clock a little behind the host's still accepts them. Uses `cryptography`
(pyca), the well-kept binding of OpenSSL, rather than hand-built ASN.1.
"""
from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from a3s_box.network.trust import GUEST_CA_BUNDLE, GUEST_CA_CERT, GUEST_TRUST_STORE  # noqa: F401
_BACKDATE = datetime.timedelta(days=1)
_CA_LIFE = datetime.timedelta(days=3650)
_LEAF_LIFE = datetime.timedelta(days=30)


def _write_private(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_ca(folder: Path, box_id: str) -> Path:
    """The box's CA (created once): returns the certificate's path (PEM)."""
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    if cert_path.is_file() and key_path.is_file():
        return cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"a3s-box CA for {box_id}"[:64]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "a3s-box")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + _CA_LIFE)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


@dataclass(frozen=True)
class CaPem:
    """A box's CA as PEM bytes: read by root where the box's folder is readable, and
    handed to a proxy that cannot read it (the egress daemon gets them in a message)."""

    cert: bytes
    key: bytes = field(repr=False)

    @classmethod
    def read(cls, folder: Path) -> "CaPem":
        return cls((folder / "ca.pem").read_bytes(), (folder / "ca.key").read_bytes())


@dataclass
class LeafIssuer:
    """Server-side TLS contexts for host names, signed by the box's CA (cached)."""

    folder: Path | None  # where ca.pem and ca.key are (None: PEM gives them)
    leaves: Path | None = None  # where leaf keys are written (default FOLDER/leaves)
    pem: CaPem | None = None
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # read now: the proxy drops root before the first leaf is needed
        if self.pem is not None:
            pem = self.pem
        elif self.folder is not None:
            pem = CaPem.read(self.folder)
        else:
            raise ValueError("a leaf issuer needs its CA: a folder or the PEM")
        leaves = self.leaves if self.leaves is not None else self.folder / "leaves" if self.folder else None
        if leaves is None:
            raise ValueError("a leaf issuer given the CA's PEM needs a folder for its leaves")
        self._leaf_dir = leaves
        self._ca_cert = x509.load_pem_x509_certificate(pem.cert)
        key = serialization.load_pem_private_key(pem.key, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._ca_key = key

    def context_for(self, host: str) -> ssl.SSLContext:
        ctx = self._contexts.get(host)
        if ctx is None:
            ctx = self._contexts[host] = self._make(host)
        return ctx

    def _make(self, host: str) -> ssl.SSLContext:
        ca_cert, ca_key = self._ca_cert, self._ca_key
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - _BACKDATE).not_valid_after(now + _LEAF_LIFE)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        leaf_dir = self._leaf_dir
        leaf_dir.mkdir(mode=0o700, exist_ok=True)
        pem = leaf_dir / f"{host}.pem"
        _write_private(pem, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
                       + cert.public_bytes(serialization.Encoding.PEM))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])  # we read HTTP/1.1 heads; no h2 through here
        ctx.load_cert_chain(pem)
        return ctx
