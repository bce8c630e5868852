"""The cluster PKI: a CA (ECDSA P-256), node keys, certificate requests and certificates.

A node's certificate names its instance in a SAN URI (`jobmesh:instance:<id>`) and carries its
advertised addresses; every certificate also names `SERVER_NAME`, the name every channel checks,
because nodes are dialled by whatever address the view holds (an interface, a seed, loopback),
and what matters is that the certificate chains to the cluster CA.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import urllib.parse
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.errors import JobmeshError

SERVER_NAME = "node.jobmesh"
"""DNS name in every node certificate; channels verify it (`grpc.ssl_target_name_override`)."""
INSTANCE_URI_PREFIX = "jobmesh:instance:"
CLIENT_URI_PREFIX = "jobmesh:client:"
JOIN_URI_PREFIX = "jobmesh:join:"
SCOPE_URI_PREFIX = "jobmesh:scope:"
"""A client certificate's SAN URI granting a scope (`jobmesh:scope:read`), like a token's."""
TOPICS_URI_PREFIX = "jobmesh:topics:"
"""A client certificate's SAN URI limiting submit/work to a topic pattern (percent-encoded)."""
CA_DAYS = 3650
SHORT_FINGERPRINT_CHARS = 16


class PkiError(JobmeshError):
    """A key, certificate or request is malformed or does not belong to this cluster."""


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PEM (PKCS#8, unencrypted: the file itself is mode 0600) of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """A private key from PEM."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the key is not an ECDSA key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    """The first certificate of a PEM blob."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise PkiError(f"not a PEM certificate: {e}") from e


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def short_fingerprint(cert: x509.Certificate) -> str:
    """The fingerprint's first 16 hex digits (for mDNS TXT and status lines)."""
    return fingerprint(cert)[:SHORT_FINGERPRINT_CHARS]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_ca(cluster_name: str = "jobmesh") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed cluster CA (key, certificate)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def new_csr(key: ec.EllipticCurvePrivateKey, instance_id: str) -> x509.CertificateSigningRequest:
    """A certificate request for this node's key, naming its instance."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, instance_id)]))
        .sign(key, hashes.SHA256())
    )


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """A certificate request from PEM, with its signature checked."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as e:
        raise PkiError(f"not a PEM certificate request: {e}") from e
    if not csr.is_signature_valid:
        raise PkiError("the certificate request's signature is invalid")
    return csr


def _san(addresses: tuple[str, ...], uri: str, extra_uris: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), x509.DNSName(SERVER_NAME)]
    names += [x509.UniformResourceIdentifier(extra) for extra in extra_uris]
    for address in dict.fromkeys(addresses):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address.strip("[]"))))
        except ValueError:
            if address:
                names.append(x509.DNSName(address))
    return x509.SubjectAlternativeName(names)


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    uri: str,
    addresses: tuple[str, ...],
    lifetime: datetime.timedelta,
    extra_uris: tuple[str, ...] = (),
) -> x509.Certificate:
    """A leaf certificate (server and client use) for `public_key`, naming `uri` (and
    `extra_uris`: a client's scopes and topic patterns) in its SAN."""
    now = _now()
    common_name = uri.rsplit(":", 1)[-1][:64]
    # Valid from a little earlier, for clocks slightly behind; a tenth of the lifetime at most,
    # so renewal at a fraction of the lifetime stays meaningful for short test lifetimes.
    backdate = min(datetime.timedelta(minutes=5), lifetime / 10)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(_san(addresses, uri, extra_uris), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def is_signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True if `cert` was issued by `ca_cert` (signature checked)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class CertIdentity:
    """Who a certificate names: a node (instance id) or a client (name)."""

    instance_id: str = ""
    client: str = ""
    join_token: str = ""
    """Set for a join token's bootstrap certificate (its token id)."""
    scopes: tuple[str, ...] = ()
    """A client certificate's scopes (`jobmesh:scope:` URIs); none: rights come from a token."""
    topics: tuple[str, ...] = ()
    """A client certificate's topic patterns (`jobmesh:topics:` URIs); none: every topic."""
    serial: str = ""
    """The certificate's serial number (hex): its id for revocation and the audit journal."""


def identity_of(cert: x509.Certificate) -> CertIdentity:
    """The instance or client a certificate's SAN URI names (empty if none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return CertIdentity()
    identity = identity_of_uris(san.get_values_for_type(x509.UniformResourceIdentifier))
    return dataclasses.replace(identity, serial=f"{cert.serial_number:x}")


def identity_of_uris(uris: list[str]) -> CertIdentity:
    """The instance or client named by SAN URIs (as `auth_context()` lists them)."""
    for uri in uris:
        if uri.startswith(INSTANCE_URI_PREFIX):
            return CertIdentity(instance_id=uri.removeprefix(INSTANCE_URI_PREFIX))
        if uri.startswith(CLIENT_URI_PREFIX):
            return CertIdentity(
                client=uri.removeprefix(CLIENT_URI_PREFIX),
                scopes=tuple(
                    u.removeprefix(SCOPE_URI_PREFIX) for u in uris if u.startswith(SCOPE_URI_PREFIX)
                ),
                topics=tuple(
                    urllib.parse.unquote(u.removeprefix(TOPICS_URI_PREFIX))
                    for u in uris
                    if u.startswith(TOPICS_URI_PREFIX)
                ),
            )
        if uri.startswith(JOIN_URI_PREFIX):
            return CertIdentity(join_token=uri.removeprefix(JOIN_URI_PREFIX))
    return CertIdentity()


def client_uris(scopes: tuple[str, ...], topics: tuple[str, ...]) -> tuple[str, ...]:
    """The SAN URIs that give a client certificate `scopes`, limited to `topics` patterns."""
    return tuple(SCOPE_URI_PREFIX + s for s in scopes) + tuple(
        TOPICS_URI_PREFIX + urllib.parse.quote(t, safe="/*") for t in topics
    )


def expires_at(cert: x509.Certificate) -> datetime.datetime:
    """When the certificate stops being valid (UTC)."""
    return cert.not_valid_after_utc


def issued_at(cert: x509.Certificate) -> datetime.datetime:
    """When the certificate became valid (UTC)."""
    return cert.not_valid_before_utc
