"""A plain Jobmesh client that uses only the generated stubs (generated/jobmesh/v1).

Adds one job, follows its events with WatchJobs until it finishes, and prints the finished
job as JSON. Needs only `grpcio` and `protobuf` (no `node` package):

    python examples/python/client.py --node 127.0.0.1:7710 --bundle bundle/ --token-file submit.token \
        demo/upper text=hello --payload-text 'hi'

(credentials.py says where the bundle and the token come from; `--insecure` for a plaintext node.)

Exit code 0 when the job SUCCEEDED, 1 when it ended otherwise, 2 on a timeout.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

# The committed stubs live in generated/ at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "generated"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from google.protobuf import json_format
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

import credentials

TERMINAL_EVENTS = {
    jobs_pb2.JOB_EVENT_TYPE_FINISHED,
    jobs_pb2.JOB_EVENT_TYPE_CANCELLED,
    jobs_pb2.JOB_EVENT_TYPE_STOPPED,
    jobs_pb2.JOB_EVENT_TYPE_REMOVED,
}


def property_value(text: str) -> jobs_pb2.PropertyValue:
    """`42` becomes an int, `1.5` a double, `true`/`false` a bool, anything else a string."""
    if text in ("true", "false"):
        return jobs_pb2.PropertyValue(bool_value=text == "true")
    for kind, convert in (("int_value", int), ("double_value", float)):
        try:
            return jobs_pb2.PropertyValue(**{kind: convert(text)})
        except ValueError:
            pass
    return jobs_pb2.PropertyValue(string_value=text)


def head_seq(stub: jobs_pb2_grpc.JobServiceStub) -> int:
    """The newest event sequence number: watching from it after adding misses nothing."""
    call = stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_seq=-1, job_ids=["-"]), timeout=10)
    try:
        return next(call).head_seq
    finally:
        call.cancel()


def get_payload(stub: jobs_pb2_grpc.JobServiceStub, job_id: str, kind: int) -> bytes:
    """A payload of any size with GetPayload: pieces of at most 1 MiB, checked with CRC-32."""
    data, whole = bytearray(), 0
    for piece in stub.GetPayload(jobs_pb2.GetPayloadRequest(job_id=job_id, kind=kind), timeout=60):
        if piece.offset != len(data) or zlib.crc32(piece.data) != piece.data_crc32:
            raise RuntimeError(f"job {job_id}: a damaged or misplaced payload piece")
        data += piece.data
        whole = piece.payload_crc32
    if zlib.crc32(data) != whole:
        raise RuntimeError(f"job {job_id}: the payload does not match its CRC-32")
    return bytes(data)


def get_job_with_payloads(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> jobs_pb2.Job:
    """The job with its log and both payloads: GetJob inlines payloads of at most 1 MiB (so its
    answer fits gRPC's default 4 MiB receive limit) and flags the larger ones for GetPayload."""
    job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id, include_payloads=True, include_log=True)).job
    if job.payload_omitted:
        job.payload = get_payload(stub, job_id, jobs_pb2.PAYLOAD_KIND_INPUT)
        job.payload_omitted = False
    if job.output_payload_omitted:
        job.output_payload = get_payload(stub, job_id, jobs_pb2.PAYLOAD_KIND_OUTPUT)
        job.output_payload_omitted = False
    return job


def add_and_wait(stub: jobs_pb2_grpc.JobServiceStub, job: jobs_pb2.NewJob, timeout_s: float) -> jobs_pb2.Job:
    """Add `job`, follow its events until it finishes, and return it with its payloads."""
    after = head_seq(stub)
    added = stub.AddJob(jobs_pb2.AddJobRequest(job=job), timeout=10).job
    print(f"added {added.id} ({added.topic})", file=sys.stderr)
    watch = stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_seq=after, job_ids=[added.id]), timeout=timeout_s)
    try:
        for response in watch:
            for event in response.events:
                kind = jobs_pb2.JobEventType.Name(event.type).removeprefix("JOB_EVENT_TYPE_")
                detail = event.message
                if event.HasField("progress") and event.progress.total_steps:
                    detail = f"{event.progress.completed_steps}/{event.progress.total_steps} {detail}"
                print(f"  {kind:<9} {detail}", file=sys.stderr)
                if event.type in TERMINAL_EVENTS:
                    return get_job_with_payloads(stub, added.id)
    finally:
        watch.cancel()
    raise RuntimeError("the node closed the event stream")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--node", default="127.0.0.1:7710", help="HOST:PORT of a node")
    parser.add_argument("--payload-text", default="", help="input payload (UTF-8 text)")
    parser.add_argument("--payload-file", type=Path, help="input payload read from this file (any size)")
    parser.add_argument(
        "--output-file", type=Path, help="write the output payload here (and print the job without payloads)"
    )
    parser.add_argument(
        "--input-file", type=Path, help="with --output-file: write the input payload, read back, here"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the job")
    parser.add_argument("topic")
    parser.add_argument("properties", nargs="*", metavar="NAME=VALUE")
    credentials.add_arguments(parser)
    args = parser.parse_args(argv)
    payload = args.payload_file.read_bytes() if args.payload_file else args.payload_text.encode()
    # One AddJob message of any size: gRPC sends without a limit by default, and a node takes
    # up to its jobs.max_payload_bytes (64 MiB by default) in one request.
    job = jobs_pb2.NewJob(topic=args.topic, payload=payload)
    for item in args.properties:
        name, _, value = item.partition("=")
        job.properties[name].CopyFrom(property_value(value))
    started = time.monotonic()
    with credentials.open_channel(args) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        try:
            finished = add_and_wait(stub, job, args.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                print(f"the job did not finish within {args.timeout}s", file=sys.stderr)
                return 2
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(f"finished in {time.monotonic() - started:.2f}s", file=sys.stderr)
    if args.output_file:
        args.output_file.write_bytes(finished.output_payload)
        if args.input_file:
            args.input_file.write_bytes(finished.payload)
        finished.ClearField("payload")
        finished.ClearField("output_payload")
    print(json_format.MessageToJson(finished, indent=2))
    return 0 if finished.state == jobs_pb2.JOB_STATE_SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
