"""Who really serves at an address: the instance id in the certificate a peer's server presents.

Channels check that a server's certificate chains to the cluster CA and names `pki.SERVER_NAME`,
not which instance it is (peers are dialled by whatever address the view holds), and gRPC Python
does not show a client the server's certificate. Where an answer is a claim of identity (the
instance a membership answer names, the first time an address answers as it; a peer's "your
instance id is mine", ALREADY_EXISTS, which makes this node stop), one extra TLS handshake reads
that certificate.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509

from node.security import pki
from node.security.cluster import TlsMaterial


@functools.lru_cache(maxsize=2)  # the current material, and the one before a renewal
def _context(tls: TlsMaterial) -> ssl.SSLContext:
    """A client context trusting only the cluster CA and presenting this node's certificate."""
    assert tls.key is not None
    assert tls.chain is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=tls.ca.decode())
    context.set_alpn_protocols(["h2"])
    # `ssl` loads a key only from a file: a private directory (0700), removed at once.
    with tempfile.TemporaryDirectory(prefix="jobmesh-tls-") as directory:
        key, chain = Path(directory) / "key.pem", Path(directory) / "chain.pem"
        for path, data in ((key, tls.key), (chain, tls.chain)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        context.load_cert_chain(chain, key)
    return context


async def server_instance(host: str, port: int, tls: TlsMaterial, timeout_s: float) -> str:
    """The instance id in the certificate of the server at host:port ("" if it names none).

    Raises OSError (or TimeoutError) when no TLS handshake with a server of the cluster CA
    completes in time.
    """
    context = await asyncio.to_thread(_context, tls)
    async with asyncio.timeout(timeout_s):
        _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=pki.SERVER_NAME)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        # Abort, not close: a graceful TLS shutdown waits for the server's close_notify, which
        # a gRPC server need not send for a connection that carried no HTTP/2.
        writer.transport.abort()
    return pki.identity_of(x509.load_der_x509_certificate(der)).instance_id if der else ""
