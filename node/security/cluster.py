"""A node's cluster files in its data dir, and the first-start bootstrap of a one-node cluster.

<data_dir>/cluster/ holds `ca.pem` (the cluster CA), `ca.key` (only on nodes that admit others),
`node.pem` + `node.key` (this node's certificate and key) and `admin.token`. Secrets are written
mode 0600, atomically (a crash never leaves half a key).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from node.errors import JobmeshError
from node.security import pki, tokens

log = logging.getLogger(__name__)

CLUSTER_DIR = "cluster"


class NotInCluster(JobmeshError):
    """This data dir has no certificate of a cluster and cannot make one (join first)."""


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file readable only by its owner, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # the umask may have narrowed it, never widened: make it exact
    os.replace(tmp, path)


@dataclass(frozen=True)
class TlsMaterial:
    """PEM material for TLS: the CA to trust, and (for nodes) this node's key and certificate chain."""

    ca: bytes
    key: bytes | None = None
    chain: bytes | None = None
    """This node's certificate followed by the CA's, so a joining node can read the CA in the handshake."""


class ClusterFiles:
    """The cluster files of one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / CLUSTER_DIR
        self.ca_cert = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.node_cert = self.dir / "node.pem"
        self.node_key = self.dir / "node.key"
        self.admin_token = self.dir / "admin.token"
        self.client_cert = self.dir / "client.pem"
        self.client_key = self.dir / "client.key"

    def has_ca(self) -> bool:
        """True if this data dir belongs to a cluster (knows its CA)."""
        return self.ca_cert.exists()

    def admits(self) -> bool:
        """True if this node holds the CA key (may issue certificates and tokens)."""
        return self.ca_key.exists()

    def read_ca(self) -> x509.Certificate:
        """The cluster CA certificate."""
        return pki.load_cert(self.ca_cert.read_bytes())

    def read_ca_key(self) -> ec.EllipticCurvePrivateKey:
        """The CA key (NotInCluster if this node does not admit)."""
        if not self.admits():
            raise NotInCluster(f"this node holds no CA key ({self.ca_key} missing): it cannot admit")
        return pki.load_key(self.ca_key.read_bytes())

    def read_node_cert(self) -> x509.Certificate | None:
        """This node's certificate, if it has one."""
        return pki.load_cert(self.node_cert.read_bytes()) if self.node_cert.exists() else None

    def init(self, cluster_name: str = "jobmesh") -> x509.Certificate:
        """Make a new cluster here: CA and admin token (the node certificate follows at start)."""
        if self.has_ca():
            raise JobmeshError(f"{self.dir} already belongs to a cluster (CA {self.ca_cert})")
        key, cert = pki.new_ca(cluster_name)
        write_private(self.ca_key, pki.key_pem(key))
        write_private(self.ca_cert, pki.cert_pem(cert), 0o644)
        self.write_admin_token(key)
        self.write_client_certificate()
        return cert

    def write_admin_token(self, ca_key: ec.EllipticCurvePrivateKey) -> str:
        """Create an admin token, keep it in `admin.token` (0600) and return it."""
        token = tokens.sign(tokens.new_claims("local-admin", ["admin"], [], 0), ca_key)
        write_private(self.admin_token, token.encode())
        return token

    def write_client_certificate(self, name: str = "local", days: float = pki.CA_DAYS) -> None:
        """A client certificate of this cluster for the CLI on this machine (`client.pem`/`.key`).

        The server requires a certificate of the cluster CA on every connection; a client's
        rights come from its bearer token, not from this certificate.
        """
        key_pem, cert_pem = self.issue_client(name, days)
        write_private(self.client_key, key_pem)
        write_private(self.client_cert, cert_pem, 0o644)

    def issue_client(
        self, name: str, days: float, scopes: tuple[str, ...] = (), topics: tuple[str, ...] = ()
    ) -> tuple[bytes, bytes]:
        """A new client key and certificate (PEM) of this cluster, naming `jobmesh:client:<name>`;
        with `scopes` it is a credential by itself (no token needed), limited to `topics`."""
        key_pem, cert = self.issue_key_and_cert(
            pki.CLIENT_URI_PREFIX + name,
            (),
            datetime.timedelta(days=days),
            pki.client_uris(scopes, topics),
        )
        return key_pem, pki.cert_pem(cert)

    def issue_key_and_cert(
        self,
        uri: str,
        addresses: tuple[str, ...],
        lifetime: datetime.timedelta,
        extra_uris: tuple[str, ...] = (),
    ) -> tuple[bytes, x509.Certificate]:
        """A fresh key (PEM) and a certificate for it naming `uri`, signed with this CA key."""
        key = pki.new_key()
        cert = pki.issue(
            self.read_ca_key(), self.read_ca(), key.public_key(), uri, addresses, lifetime, extra_uris
        )
        return pki.key_pem(key), cert

    def client_material(self) -> TlsMaterial | None:
        """TLS material for a client on this machine, if the data dir has it: the local client
        certificate (rights from the token), else the node's own (a node that joined: all rights)."""
        if not self.ca_cert.exists():
            return None
        ca = self.ca_cert.read_bytes()
        for cert, key in ((self.client_cert, self.client_key), (self.node_cert, self.node_key)):
            if cert.exists() and key.exists():
                return TlsMaterial(ca=ca, key=key.read_bytes(), chain=cert.read_bytes())
        return None

    def read_admin_token(self) -> str | None:
        """The local admin token, if this data dir has one."""
        return self.admin_token.read_text().strip() if self.admin_token.exists() else None

    def install_ca(self, ca: x509.Certificate) -> None:
        """Record the CA of the cluster this node joined."""
        write_private(self.ca_cert, pki.cert_pem(ca), 0o644)

    def install_node(self, key_pem: bytes, cert: x509.Certificate) -> None:
        """Store this node's key and certificate."""
        write_private(self.node_key, key_pem)
        write_private(self.node_cert, pki.cert_pem(cert), 0o644)

    def needs_certificate(self, instance_id: str, renew_fraction: float) -> bool:
        """True if there is no valid node certificate for `instance_id`, or it is due for renewal."""
        cert = self.read_node_cert()
        if cert is None or not self.node_key.exists():
            return True
        if pki.identity_of(cert).instance_id != instance_id or not pki.is_signed_by(cert, self.read_ca()):
            return True
        return renewal_due(cert, renew_fraction)

    def issue_own(self, instance_id: str, addresses: tuple[str, ...], lifetime: datetime.timedelta) -> None:
        """Issue this node a fresh key and certificate with its own CA key."""
        self.install_node(
            *self.issue_key_and_cert(pki.INSTANCE_URI_PREFIX + instance_id, addresses, lifetime)
        )

    def material(self) -> TlsMaterial:
        """This node's TLS material (NotInCluster if it has no certificate)."""
        if not self.node_cert.exists() or not self.node_key.exists():
            raise NotInCluster(f"no node certificate in {self.dir}; join a cluster with --join TOKEN")
        ca = self.ca_cert.read_bytes()
        return TlsMaterial(ca=ca, key=self.node_key.read_bytes(), chain=self.node_cert.read_bytes() + ca)


def renewal_due(cert: x509.Certificate, renew_fraction: float) -> bool:
    """True once `renew_fraction` of the certificate's lifetime has passed."""
    start, end = pki.issued_at(cert), pki.expires_at(cert)
    due = start + (end - start) * renew_fraction
    return datetime.datetime.now(datetime.UTC) >= due


def bootstrap(
    files: ClusterFiles, instance_id: str, addresses: tuple[str, ...], lifetime: datetime.timedelta
) -> TlsMaterial:
    """At start: make a one-node cluster if there is none, issue this node's certificate if it
    needs one and the CA key is here, and return the TLS material."""
    if not files.has_ca():
        files.init()
        log.warning("no cluster in %s: made a new one-node cluster (CA and admin token)", files.dir)
    if files.needs_certificate(instance_id, 1.0) and files.admits():
        files.issue_own(instance_id, addresses, lifetime)
        log.info("issued this node's certificate (instance %s)", instance_id)
    return files.material()
