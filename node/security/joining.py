"""The joining side: pin the cluster CA by the token's fingerprint, then ask for a certificate.

The CA certificate is read from the admitting node's TLS handshake (nodes send their certificate
followed by the CA's) and accepted only if its SHA-256 matches the fingerprint in the token.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import tempfile
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from jobmesh.peer.v1 import cluster_pb2, cluster_pb2_grpc

from node.security import pki
from node.security.cluster import ClusterFiles
from node.security.join import JoinRefused, JoinToken, proof

HANDSHAKE_TIMEOUT_S = 5.0


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def fetch_pinned_ca(address: str, token: JoinToken) -> bytes:
    """PEM of the CA the node at `address` presents, if it matches the token's fingerprint."""
    key_pem, cert_pem = token.bootstrap_material()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the CA is checked below, by its pinned fingerprint
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    with (
        socket.create_connection(_split(address), timeout=HANDSHAKE_TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname=pki.SERVER_NAME) as tls,
    ):
        # Python 3.11 has no public API for the peer's whole chain (3.13: get_unverified_chain).
        chain = tls._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
        for cert in chain:
            der = cert.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
            if hashlib.sha256(der).hexdigest() == token.ca_fingerprint:
                return ssl.DER_cert_to_PEM_cert(der).encode()
    raise JoinRefused(
        f"the node at {address} belongs to another cluster (its CA does not match the join token's fingerprint)"
    )


async def join(
    files: ClusterFiles,
    token: JoinToken,
    channel: grpc.aio.Channel,
    ca_pem: bytes,
    instance_id: str,
    addresses: tuple[str, ...],
) -> None:
    """Ask the admitting node behind `channel` for a certificate and install it with the CA."""
    key = pki.new_key()
    csr_pem = pki.new_csr(key, instance_id).public_bytes(serialization.Encoding.PEM)
    request = cluster_pb2.JoinRequest(
        token_id=token.id, csr_pem=csr_pem, proof=proof(token.secret, csr_pem), addresses=list(addresses)
    )
    try:
        response = await cluster_pb2_grpc.ClusterServiceStub(channel).Join(request, timeout=10)
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            raise JoinRefused(
                f"the node refused the connection (not a node of the token's cluster?): {e.details()}"
            ) from e
        raise JoinRefused(f"join refused: {e.details()}") from e
    ca = pki.load_cert(ca_pem)
    cert = pki.load_cert(response.certificate_pem)
    if not pki.is_signed_by(cert, ca) or pki.identity_of(cert).instance_id != instance_id:
        raise JoinRefused("the admitting node returned a certificate that is not ours or not of this CA")
    files.install_ca(ca)
    files.install_node(pki.key_pem(key), cert)
