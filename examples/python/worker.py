"""A Jobmesh remote worker that uses only the generated stubs (generated/jobmesh/v1).

Connects to a node's WorkerService, registers topic patterns and a concurrency, and runs
the jobs the node sends in a thread pool, reporting progress, log lines, a property and
the result. Reconnects when the stream breaks. Needs only `grpcio` and `protobuf`:

    python examples/python/worker.py --node 127.0.0.1:7710 --bundle bundle/ --token-file work.token \
        --topic 'demo/**' --concurrency 2

(credentials.py says where the bundle and a `work` token come from; `--insecure` for a
plaintext node.)

What a job does here (edit `process` for real work): `steps` steps (property, default 3)
of `step_ms` milliseconds each (default 100), then success with the input payload
upper-cased as output. A job with `fail_attempts=N` fails its first N attempts.

Payloads of any size work with gRPC's default 4 MiB receive limit: the worker registers
`chunked_payloads`, so a payload over 1 MiB arrives as `payload_chunk` messages before its
assignment (`PayloadPieces` puts it together and checks its CRC-32); the output goes back in
the one `result` message (gRPC sends messages of any size by default; the node takes up to
its payload limit).
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "generated"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from jobmesh.v1 import jobs_pb2, workers_pb2, workers_pb2_grpc

import credentials

log = logging.getLogger("worker")
RECONNECT_DELAY_S = 1.0


def plain(value: jobs_pb2.PropertyValue) -> object:
    """The Python value of a scalar PropertyValue."""
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind else None


class PayloadPieces:
    """The `payload_chunk` pieces of the assignment that follows them, checked as they come."""

    def __init__(self) -> None:
        self.key: tuple[str, int] | None = None
        self.data = bytearray()
        self.error = ""

    def add(self, chunk: workers_pb2.WorkPayloadChunk) -> None:
        """Take one piece (they come in offset order, back to back, before the assignment); a
        damaged or misplaced one makes the assignment's `payload()` raise."""
        key = (chunk.job_id, chunk.attempt)
        if chunk.offset == 0:
            self.key, self.data, self.error = key, bytearray(), ""
        if self.error:
            return
        if zlib.crc32(chunk.data) != chunk.data_crc32:
            self.error = f"job {chunk.job_id}: the payload piece at offset {chunk.offset} is damaged"
        elif self.key != key or chunk.offset != len(self.data):
            self.error = f"job {chunk.job_id}: the payload piece at offset {chunk.offset} is out of order"
        else:
            self.data += chunk.data

    def payload(self, assignment: workers_pb2.WorkAssignment) -> bytes:
        """The assignment's whole input payload, inline or from the pieces before it, checked
        (ValueError if it is damaged or incomplete)."""
        if assignment.payload_chunked:
            key, error, data = self.key, self.error, bytes(self.data)
            self.key, self.data, self.error = None, bytearray(), ""
            if key != (assignment.job_id, assignment.attempt):
                raise ValueError(f"job {assignment.job_id}: its payload pieces did not arrive")
            if error:
                raise ValueError(error)
        else:
            data = assignment.payload
        if len(data) != assignment.payload_size or zlib.crc32(data) != assignment.payload_crc32:
            raise ValueError(f"job {assignment.job_id}: the input payload does not match its CRC-32")
        return data


class Job:
    """One assignment and what the job's code can do with it."""

    def __init__(
        self,
        assignment: workers_pb2.WorkAssignment,
        payload: bytes,
        send: queue.Queue[workers_pb2.WorkRequest | None],
    ):
        self.assignment = assignment
        self.payload = payload
        """The whole input payload (reassembled when it came in pieces)."""
        self.id = assignment.job_id
        self.attempt = assignment.attempt
        self.properties = {name: plain(value) for name, value in assignment.properties.items()}
        self.stopped = threading.Event()
        self._send = send

    def progress(self, total_steps: int | None = None, increment: int = 0) -> None:
        """Announce the total steps and/or add done steps."""
        report = workers_pb2.WorkProgress(job_id=self.id, attempt=self.attempt, increment_steps=increment)
        if total_steps is not None:
            report.total_steps = total_steps
        self._send.put(workers_pb2.WorkRequest(progress=report))

    def log(self, message: str) -> None:
        """Add a line to the job's log."""
        self._send.put(
            workers_pb2.WorkRequest(
                log=workers_pb2.WorkLogLine(job_id=self.id, attempt=self.attempt, message=message)
            )
        )

    def set_property(self, name: str, text: str) -> None:
        """Set a string property on the job."""
        value = jobs_pb2.PropertyValue(string_value=text)
        self._send.put(
            workers_pb2.WorkRequest(
                property=workers_pb2.WorkProperty(
                    job_id=self.id, attempt=self.attempt, name=name, value=value
                )
            )
        )


def process(job: Job, worker_name: str) -> workers_pb2.WorkResult:
    """The work itself. Returns the result to report."""
    steps = int(job.properties.get("steps", 3))  # type: ignore[call-overload]
    step_s = int(job.properties.get("step_ms", 100)) / 1000  # type: ignore[call-overload]
    fail_attempts = int(job.properties.get("fail_attempts", 0))  # type: ignore[call-overload]
    job.progress(total_steps=steps)
    job.log(f"{worker_name} started attempt {job.attempt}")
    job.set_property("processed_by", worker_name)
    for step in range(steps):
        if job.stopped.wait(step_s):
            return workers_pb2.WorkResult(
                outcome=workers_pb2.WORK_OUTCOME_FAILED, message=f"stopped at step {step}"
            )
        job.progress(increment=1)
    if job.assignment.retry_count < fail_attempts:
        return workers_pb2.WorkResult(
            outcome=workers_pb2.WORK_OUTCOME_FAILED,
            message=f"attempt {job.attempt} failed on purpose",
            retry_delay=timedelta(seconds=0.1),  # a google.protobuf.Duration
        )
    return workers_pb2.WorkResult(
        outcome=workers_pb2.WORK_OUTCOME_SUCCEEDED,
        message=f"processed by {worker_name}",
        output_payload=job.payload.upper(),
    )


class Worker:
    """One connection at a time to a node; jobs run in a pool of `concurrency` threads."""

    def __init__(
        self, connect: Callable[[], grpc.Channel], name: str, topics: list[str], concurrency: int
    ) -> None:
        self.connect, self.name, self.topics, self.concurrency = connect, name, topics, concurrency
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job")

    def run_once(self) -> None:
        """Connect, register, and run jobs until the stream ends."""
        send: queue.Queue[workers_pb2.WorkRequest | None] = queue.Queue()
        running: dict[tuple[str, int], Job] = {}
        send.put(
            workers_pb2.WorkRequest(
                register=workers_pb2.WorkerRegistration(
                    name=self.name,
                    topics=self.topics,
                    concurrency=self.concurrency,
                    chunked_payloads=True,  # payloads over 1 MiB in pieces: default limits suffice
                )
            )
        )

        def requests() -> Iterator[workers_pb2.WorkRequest]:
            while (message := send.get()) is not None:
                yield message

        def run(job: Job) -> None:
            try:
                result = process(job, self.name)
            except Exception as e:  # a bug in process(): the job cannot succeed
                result = workers_pb2.WorkResult(outcome=workers_pb2.WORK_OUTCOME_CANCELLED, message=repr(e))
            result.job_id, result.attempt = job.id, job.attempt
            running.pop((job.id, job.attempt), None)
            send.put(workers_pb2.WorkRequest(result=result))

        pieces = PayloadPieces()
        with self.connect() as channel:
            stream = workers_pb2_grpc.WorkerServiceStub(channel).Work(requests())
            try:
                for message in stream:
                    kind = message.WhichOneof("kind")
                    if kind == "registered":
                        print(
                            f"registered as {message.registered.worker_id} on {message.registered.instance_id}",
                            flush=True,
                        )
                    elif kind == "payload_chunk":
                        pieces.add(message.payload_chunk)
                    elif kind == "assignment":
                        try:
                            payload = pieces.payload(message.assignment)
                        except ValueError as e:  # damaged in transit: this attempt fails (retried)
                            failed = workers_pb2.WorkResult(
                                job_id=message.assignment.job_id,
                                attempt=message.assignment.attempt,
                                outcome=workers_pb2.WORK_OUTCOME_FAILED,
                                message=str(e),
                            )
                            send.put(workers_pb2.WorkRequest(result=failed))
                            continue
                        job = Job(message.assignment, payload, send)
                        running[(job.id, job.attempt)] = job
                        self.pool.submit(run, job)
                    elif kind == "stop":
                        job = running.get((message.stop.job_id, message.stop.attempt))
                        if job is not None:
                            job.stopped.set()
            finally:
                for job in list(running.values()):
                    job.stopped.set()
                send.put(None)

    def run_forever(self) -> None:
        """Reconnect after a broken stream."""
        while True:
            try:
                self.run_once()
                log.warning("the node closed the stream; reconnecting")
            except grpc.RpcError as e:
                log.warning("stream ended: %s: %s; reconnecting", e.code().name, e.details())
                if e.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    raise SystemExit(2) from e  # our own mistake: reconnecting would not help
            time.sleep(RECONNECT_DELAY_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--node", default="127.0.0.1:7710", help="HOST:PORT of a node")
    parser.add_argument(
        "--topic", action="append", default=[], help="topic pattern (repeatable; default demo/**)"
    )
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--name", default="python-worker")
    credentials.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        connect = lambda: credentials.open_channel(args)  # noqa: E731  # one channel per connection
        Worker(connect, args.name, args.topic or ["demo/**"], args.concurrency).run_forever()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
