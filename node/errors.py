"""The exception tree: one root, small families, each mapped to one gRPC status."""

from __future__ import annotations

import errno


class JobmeshError(Exception):
    """Root of every error Jobmesh raises on purpose."""


class InvalidArgument(JobmeshError):
    """A request or value is malformed; the message says which field and why."""


class NotFound(JobmeshError):
    """A named thing (job, schedule, queue) does not exist on this node."""


class JobNotFound(NotFound):
    """No job with the given id exists on this node."""


class FailedPrecondition(JobmeshError):
    """The job is in a state that does not allow the operation."""


class ResourceExhausted(JobmeshError):
    """A limit on the amount of work in one request was hit (e.g. too many jobs in one AddJobs)."""


class Unavailable(JobmeshError):
    """The node (or a peer) cannot serve the request now; retrying later may work."""


class PeerUnavailable(Unavailable):
    """A peer node could not be reached."""


class DuplicateInstance(JobmeshError):
    """Another live node uses this node's instance id (its data dir was copied); the later one stops."""


class ConsumerGone(Unavailable):
    """The consumer of a job's topic went away before it took the job; the job waits for another."""


class ConfigError(JobmeshError):
    """The configuration (TOML file, environment or flags) is invalid."""


class JournalError(JobmeshError):
    """The SQLite journal failed or is in a state this version cannot use."""


class DataDirInUse(JournalError):
    """Another live process holds the data directory."""


class ConsumerLoadError(ConfigError):
    """A consumer named in the configuration cannot be imported or is not callable."""


class JournalFull(ResourceExhausted):
    """The journal's disk is full: writes fail until there is room again (reads keep working)."""


class StorageUnavailable(Unavailable):
    """The journal's storage refuses writes (read-only, I/O errors); reads may keep working."""


class DataDirUnusable(JournalError):
    """The data directory cannot be created, is not a directory, or is not writable."""


class IdentityMismatch(JournalError):
    """The journal is missing, empty, or of another instance than the data dir's identity file."""


class AddressInUse(ConfigError):
    """The server's host:port is taken (another node?)."""


def listen_error(error: OSError, host: str, port: int, what: str, choose: str) -> ConfigError:
    """What a failed bind of `what` (e.g. "port", "console port") on host:port means for the
    operator: AddressInUse naming how to `choose` another, or why nothing can listen there."""
    if error.errno == errno.EADDRINUSE:
        return AddressInUse(f"{what} {port} on {host} is in use (another node?); {choose}")
    return ConfigError(f"cannot listen on {host}:{port}: {error.strerror}")


class DataLoss(JobmeshError):
    """Stored data is damaged: it is reported, never served as good data."""


class PayloadDamaged(DataLoss):
    """A stored payload does not match the checksum it was stored with."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id
