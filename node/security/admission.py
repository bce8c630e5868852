"""ClusterService: an admitting node (one holding the CA key) issues certificates to joining
nodes (with a join token) and to members renewing theirs (identified by their certificate)."""

from __future__ import annotations

import datetime
import logging

import grpc
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jobmesh.peer.v1 import cluster_pb2, cluster_pb2_grpc

from node.security import pki
from node.security.cluster import ClusterFiles
from node.security.join import JoinRefused, JoinTokens

log = logging.getLogger(__name__)

MAX_ADDRESSES = 16
MAX_ADDRESS_CHARS = 253


def _addresses(values: list[str]) -> tuple[str, ...]:
    if len(values) > MAX_ADDRESSES or any(len(a) > MAX_ADDRESS_CHARS for a in values):
        raise pki.PkiError(f"at most {MAX_ADDRESSES} addresses of at most {MAX_ADDRESS_CHARS} characters")
    return tuple(values)


def _caller(context: grpc.aio.ServicerContext) -> pki.CertIdentity:
    pems = context.auth_context().get("x509_pem_cert", [])
    return pki.identity_of(pki.load_cert(pems[0])) if pems else pki.CertIdentity()


class ClusterServicer(cluster_pb2_grpc.ClusterServiceServicer):
    """Issues node certificates with this node's CA key."""

    def __init__(self, files: ClusterFiles, lifetime: datetime.timedelta) -> None:
        self._files = files
        self._lifetime = lifetime
        self._tokens = JoinTokens(files)

    def _issue(self, csr_pem: bytes, instance_id: str, addresses: list[str]) -> dict[str, bytes]:
        """The fields of a Join/Renew response: the new certificate and the CA's."""
        csr = pki.load_csr(csr_pem)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise pki.PkiError("the certificate request's key is not an ECDSA key")
        ca = self._files.read_ca()
        cert = pki.issue(
            self._files.read_ca_key(),
            ca,
            public_key,
            pki.INSTANCE_URI_PREFIX + instance_id,
            _addresses(list(addresses)),
            self._lifetime,
        )
        return {"certificate_pem": pki.cert_pem(cert), "ca_certificate_pem": pki.cert_pem(ca)}

    async def Join(
        self, request: cluster_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.JoinResponse:
        """Redeem a join token for a node certificate."""
        caller = _caller(context)
        if caller.join_token != request.token_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "the join request names another token than its certificate"
            )
        try:
            self._tokens.redeem(request.token_id, request.csr_pem, request.proof)
            csr = pki.load_csr(request.csr_pem)
            names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            instance_id = str(names[0].value) if names else ""
            if not instance_id or len(instance_id) > 64:
                raise pki.PkiError("the certificate request names no instance id (subject CN)")
            response = self._issue(request.csr_pem, instance_id, list(request.addresses))
        except JoinRefused as e:
            log.warning("join refused: %s", e)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        except pki.PkiError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        log.info("admitted instance %s with join token %s", instance_id, request.token_id)
        return cluster_pb2.JoinResponse(**response)

    async def Renew(
        self, request: cluster_pb2.RenewRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.RenewResponse:
        """A fresh certificate for the calling member (its id from its current certificate)."""
        caller = _caller(context)
        try:
            return cluster_pb2.RenewResponse(
                **self._issue(request.csr_pem, caller.instance_id, list(request.addresses))
            )
        except pki.PkiError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        raise AssertionError("unreachable")  # abort raises
