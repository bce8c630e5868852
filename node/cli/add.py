"""`jobmesh add`: one job from the command line, or many from JSON Lines (`--from FILE|-`).

A JSON line is one NewJob in the CLI's JSON convention: `topic`, `properties` (plain JSON values;
`"name:TYPE": "text"` for times and bytes), `payload` (base64), `dedup_key`, `max_retries`,
`retry_delay` and `timeout` (seconds). The whole input is checked before the first job is sent,
so a bad line adds nothing; then the jobs go in AddJobs batches, one batch after the other, so
they are added in the order of the lines.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from jobmesh.v1 import jobs_pb2, topics_pb2

from node.cli import render
from node.cli.commands import print_job
from node.cli.common import EXIT_JOB_FAILED, EXIT_OK, client_command, client_parser, read_file, respond
from node.cli.topics import consumes
from node.cli.values import TYPE_HELP, parse_assignment, parse_json_property
from node.cli.watch import wait_with_progress
from node.client import JobmeshClient, RpcError, new_job
from node.errors import InvalidArgument
from node.properties import PropertyValue

BATCH_JOBS = 1000
BATCH_BYTES = 4 * 1024 * 1024  # payload bytes per AddJobs call, well below the message limit
_LINE_KEYS = {"topic", "properties", "payload", "dedup_key", "max_retries", "retry_delay", "timeout"}


def add_parser(sub: Any) -> None:
    """Register `add`."""
    p = client_parser(sub, "add", "add a job, or many from JSON Lines (--from)")
    p.add_argument("topic", nargs="?", help="job topic, e.g. images/resize (with --from: the default topic)")
    p.add_argument("properties", nargs="*", metavar="NAME[:TYPE]=VALUE", help=TYPE_HELP)
    p.add_argument("--payload", metavar="FILE", help="input payload read from FILE ('-' for stdin)")
    p.add_argument(
        "--from",
        dest="source",
        metavar="FILE",
        help="add one job per JSON line of FILE ('-' for stdin); see README for the line format",
    )
    p.add_argument("--dedup-key", metavar="KEY", help="idempotency key: an existing job with it is returned")
    job = p.add_argument_group("per-job overrides of the queue's settings")
    job.add_argument("--retries", type=int, metavar="N", help="retries after a failed attempt (-1: forever)")
    job.add_argument("--retry-delay", type=float, metavar="S", help="seconds before a retry")
    job.add_argument(
        "--attempt-timeout", type=float, metavar="S", help="an attempt running longer fails (0: none)"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="show live progress until the job finishes; exit 0 only if it SUCCEEDED",
    )
    p.add_argument("--wait-timeout", type=float, metavar="S", help="give up waiting after S seconds (exit 6)")
    p.set_defaults(handler=client_command(cmd_add))


def cmd_add(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh add`."""
    if args.source is not None:
        return _add_many(args, client)
    if not args.topic:
        raise InvalidArgument("give the TOPIC of the job (or --from FILE for many)")
    properties = dict(parse_assignment(text) for text in args.properties)
    payload = read_file(args.payload, "payload file") if args.payload is not None else b""
    job = _new_job(args, args.topic, properties, payload, args.dedup_key or "")
    after_seq = client.head_seq() if args.wait else 0
    added = client.add(job)
    if not args.wait:
        return respond(args, added, added.id)
    print(f"added {added.id}, waiting...", file=sys.stderr)
    try:
        done = wait_with_progress(client, added.id, after_seq, args.wait_timeout, sys.stderr)
    except TimeoutError as e:
        raise TimeoutError(f"{e}{_why_waiting(client, added.topic)}") from e
    print_job(client, done, args.json)
    return EXIT_OK if done.state == jobs_pb2.JOB_STATE_SUCCEEDED else EXIT_JOB_FAILED


def _why_waiting(client: JobmeshClient, topic: str) -> str:
    """`: no live instance consumes TOPIC ...` when that is why a job is still waiting."""
    try:
        matrix = client.call(client.topics.ListTopicConsumption, topics_pb2.ListTopicConsumptionRequest())
    except RpcError:
        return ""
    if any(consumes(instance, topic) for instance in matrix.instances):
        return ""
    return (
        f"; no live instance consumes topic {topic} (it waits QUEUED until one does; "
        "see `jobmesh topics` and `jobmesh workers`)"
    )


def _new_job(
    args: argparse.Namespace,
    topic: str,
    properties: dict[str, PropertyValue],
    payload: bytes,
    dedup_key: str,
    line: dict[str, Any] | None = None,
) -> jobs_pb2.NewJob:
    """A NewJob; per-job settings from the JSON line win over the command line's."""
    line = line or {}
    return new_job(
        topic,
        properties,
        payload,
        dedup_key=dedup_key,
        max_retries=line.get("max_retries", args.retries),
        retry_delay_s=line.get("retry_delay", args.retry_delay),
        timeout_s=line.get("timeout", args.attempt_timeout),
    )


def _add_many(args: argparse.Namespace, client: JobmeshClient) -> int:
    if args.wait or args.payload is not None or args.dedup_key:
        raise InvalidArgument(
            "--from takes payloads and dedup keys from its lines; drop --wait, --payload, --dedup-key"
        )
    defaults = dict(parse_assignment(text) for text in args.properties)
    text = read_file(args.source, "jobs file").decode("utf-8", errors="replace")
    jobs = [_job_from_line(args, defaults, number, line) for number, line in _lines(text)]
    response = jobs_pb2.AddJobsResponse()
    for start, batch in _batches(jobs):
        try:
            added = client.call(client.jobs.AddJobs, jobs_pb2.AddJobsRequest(jobs=batch))
        except RpcError as e:
            if response.job_ids:
                print(
                    f"jobmesh add: {len(response.job_ids)} jobs were added before this batch", file=sys.stderr
                )
            e.details = f"jobs {start + 1}..{start + len(batch)} (in input order): {e.details}"
            raise
        response.job_ids.extend(added.job_ids)
        response.deduplicated.extend(added.deduplicated)
    if args.json:
        render.print_json(render.to_json(response), sys.stdout)
    else:
        sys.stdout.write("".join(job_id + "\n" for job_id in response.job_ids))
    print(f"added {len(response.job_ids)} jobs", file=sys.stderr)
    return EXIT_OK


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _job_from_line(
    args: argparse.Namespace, defaults: dict[str, PropertyValue], number: int, line: str
) -> jobs_pb2.NewJob:
    where = f"{args.source} line {number}"
    try:
        data = json.loads(line)
    except ValueError as e:
        raise InvalidArgument(f"{where} is not JSON ({e}); write one JSON object per line") from e
    if not isinstance(data, dict):
        raise InvalidArgument(f'{where}: write a JSON object, e.g. {{"topic": "a/b"}}')
    unknown = sorted(set(data) - _LINE_KEYS)
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {unknown[0]!r}; use {', '.join(sorted(_LINE_KEYS))}")
    topic = data.get("topic", args.topic)
    if not isinstance(topic, str) or not topic:
        raise InvalidArgument(f'{where}: no topic; give "topic" in the line or TOPIC on the command line')
    raw_properties = data.get("properties", {})
    if not isinstance(raw_properties, dict):
        raise InvalidArgument(f'{where}: "properties" must be an object')
    properties = dict(defaults)
    properties.update(
        parse_json_property(name, value, f"{where}: property {name!r}")
        for name, value in raw_properties.items()
    )
    try:
        payload = base64.b64decode(data.get("payload", ""), validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise InvalidArgument(f'{where}: "payload" must be base64 text') from e
    for key, kinds in (("max_retries", int), ("retry_delay", (int, float)), ("timeout", (int, float))):
        if key in data and (not isinstance(data[key], kinds) or isinstance(data[key], bool)):
            raise InvalidArgument(f"{where}: {key!r} must be a number")
    return _new_job(args, topic, properties, payload, str(data.get("dedup_key", "")), data)


def _batches(jobs: Sequence[jobs_pb2.NewJob]) -> Iterator[tuple[int, list[jobs_pb2.NewJob]]]:
    """(index of the first job, jobs) of at most BATCH_JOBS jobs and about BATCH_BYTES payload."""
    batch: list[jobs_pb2.NewJob] = []
    start = size = 0
    for index, job in enumerate(jobs):
        if batch and (len(batch) >= BATCH_JOBS or size + len(job.payload) > BATCH_BYTES):
            yield start, batch
            batch, start, size = [], index, 0
        batch.append(job)
        size += len(job.payload)
    if batch:
        yield start, batch
