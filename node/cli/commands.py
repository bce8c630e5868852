"""Client commands: `add`, `jobs`, `job`, `stop`, `rm`, `retry` against a running node.

Exit codes: 0 success; 1 the awaited job did not succeed; 2 bad usage or invalid argument;
3 job not found; 4 node unreachable; 5 the job's state does not allow the operation;
6 timed out waiting; 70 unexpected error from the node.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from jobmesh.v1 import jobs_pb2

from node.cli import render
from node.cli.cluster import add_token_argument
from node.cli.values import TYPE_HELP, parse_assignment, parse_condition
from node.cli.watch import wait_with_progress
from node.client import JobmeshClient, RpcError
from node.config import DEFAULT_PORT
from node.errors import InvalidArgument
from node.instance import RUN_FILE
from node.transport import client_transport

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_PRECONDITION = 5
EXIT_TIMEOUT = 6
EXIT_INTERNAL = 70

_EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_USAGE,
}

QUERY_TYPES = {
    name.removeprefix("QUERY_TYPE_").lower(): number
    for name, number in jobs_pb2.QueryType.items()
    if name != "QUERY_TYPE_UNSPECIFIED"
}


def node_address(args: argparse.Namespace, environ: dict[str, str]) -> str:
    """--node, else JOBMESH_NODE, else the node.json of ./.jobmesh (or --data-dir), else localhost:7710."""
    if args.node:
        return str(args.node)
    if environ.get("JOBMESH_NODE"):
        return environ["JOBMESH_NODE"]
    run_file = Path(environ.get("JOBMESH_DATA_DIR", ".jobmesh")) / RUN_FILE
    try:
        return str(json.loads(run_file.read_text())["address"])
    except (OSError, ValueError, KeyError):
        return f"127.0.0.1:{DEFAULT_PORT}"


def client_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument(
        "--node",
        metavar="HOST:PORT",
        help="node to talk to (default: $JOBMESH_NODE, ./.jobmesh/node.json, :7710)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node (default 30)")
    add_token_argument(p)
    return p


def add_parsers(sub: Any) -> None:
    """Register the client subcommands."""
    p = client_parser(sub, "add", "add a job")
    p.add_argument("topic", help="job topic, e.g. images/resize")
    p.add_argument("properties", nargs="*", metavar="NAME[:TYPE]=VALUE", help=TYPE_HELP)
    p.add_argument(
        "--payload", type=Path, metavar="FILE", help="input payload read from FILE ('-' for stdin)"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="show live progress until the job finishes; exit 0 only if it SUCCEEDED",
    )
    p.add_argument(
        "--dedup-key", metavar="KEY", help="idempotency key: an existing job with it is returned instead"
    )
    p.add_argument("--wait-timeout", type=float, metavar="S", help="give up waiting after S seconds (exit 6)")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.set_defaults(handler=cmd_add)

    p = client_parser(sub, "jobs", "list jobs")
    p.add_argument(
        "--state",
        default="all",
        choices=sorted(QUERY_TYPES),
        help="which jobs (default all; cancelled = stopped, given_up, error and dropped)",
    )
    p.add_argument("--topic", help="only this exact topic")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COND[&COND...]",
        help="property template, e.g. 'size:int>=10&color=red'; repeat for OR",
    )
    p.add_argument("--limit", type=int, default=100, help="at most this many jobs (default 100; 0 = all)")
    p.add_argument("--newest", action="store_true", help="newest first")
    p.add_argument(
        "--topology",
        action="store_true",
        help="ask every live instance (one page; offloaded jobs listed once)",
    )
    p.add_argument("--json", action="store_true", help="print JSON: {jobs, total_count}")
    p.set_defaults(handler=cmd_jobs)

    p = client_parser(sub, "job", "show one job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--output", type=Path, metavar="FILE", help="write the job's output payload to FILE")
    p.add_argument(
        "--payload", dest="payload_out", type=Path, metavar="FILE", help="write its input payload to FILE"
    )
    p.add_argument("--log", action="store_true", help="also show the job's log lines")
    p.set_defaults(handler=cmd_job)

    for name, help_text, handler in (
        ("stop", "stop a job (queued: at once; active: asks its consumer to stop)", cmd_stop),
        ("rm", "remove a job (queued/active: DROPPED; finished: deleted)", cmd_rm),
        ("retry", "run a finished job again", cmd_retry),
    ):
        p = client_parser(sub, name, help_text)
        p.add_argument("job_id", metavar="ID")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=handler)


def client_command(body: Any) -> Any:
    """Make `body(args, client) -> int` a subcommand handler (connects, maps errors to exit codes)."""
    return lambda args, environ: _run(args, environ, lambda client: body(args, client))


def _run(args: argparse.Namespace, environ: dict[str, str], body: Any) -> int:
    """Connect, run `body(client)`, and turn errors into messages and exit codes."""
    address = node_address(args, environ)
    try:
        with JobmeshClient(
            address, timeout_s=args.timeout, transport=client_transport(environ, args.token)
        ) as client:
            return int(body(client))
    except InvalidArgument as e:
        print(f"jobmesh {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as e:  # from a stream
        return _report(args, address, RpcError(e.code(), e.details() or "", args.command))
    except RpcError as e:
        return _report(args, address, e)
    except OSError as e:
        print(f"jobmesh {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE


def _report(args: argparse.Namespace, address: str, e: RpcError) -> int:
    """Print an RPC error for people and return its exit code."""
    if e.code is grpc.StatusCode.UNAVAILABLE:
        print(f"jobmesh {args.command}: no node reachable at {address} ({e.details})", file=sys.stderr)
    else:
        print(f"jobmesh {args.command}: {e.details}", file=sys.stderr)
    return _EXIT_BY_CODE.get(e.code, EXIT_INTERNAL)


def _print_job(job: jobs_pb2.Job, as_json: bool) -> None:
    if as_json:
        render.print_json(render.job_to_dict(job), sys.stdout)
    else:
        render.print_job(job, sys.stdout)


def cmd_add(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh add`."""

    def body(client: JobmeshClient) -> int:
        properties = dict(parse_assignment(text) for text in args.properties)
        payload = b""
        if args.payload is not None:
            payload = sys.stdin.buffer.read() if str(args.payload) == "-" else args.payload.read_bytes()
        after_seq = client.head_seq() if args.wait else 0
        job = client.add_job(args.topic, properties, payload, dedup_key=args.dedup_key or "")
        if not args.wait:
            if args.json:
                render.print_json(render.job_to_dict(job), sys.stdout)
            else:
                print(job.id)
            return EXIT_OK
        print(f"added {job.id}, waiting...", file=sys.stderr)
        try:
            job = wait_with_progress(client, job.id, after_seq, args.wait_timeout, sys.stderr)
        except TimeoutError as e:
            print(f"jobmesh add: {e}", file=sys.stderr)
            return EXIT_TIMEOUT
        _print_job(job, args.json)
        return EXIT_OK if job.state == jobs_pb2.JOB_STATE_SUCCEEDED else EXIT_JOB_FAILED

    return _run(args, environ, body)


def cmd_jobs(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh jobs`."""

    def body(client: JobmeshClient) -> int:
        request = jobs_pb2.FindJobsRequest(
            type=QUERY_TYPES[args.state],
            topic=args.topic or "",
            newest_first=args.newest,
            scope=jobs_pb2.QUERY_SCOPE_TOPOLOGY if args.topology else jobs_pb2.QUERY_SCOPE_LOCAL,
        )
        for template_text in args.where:
            template = request.templates.add()
            for condition_text in template_text.split("&"):
                template.conditions.append(parse_condition(condition_text.strip()).to_proto())
        if args.limit < 0:
            raise InvalidArgument(f"--limit {args.limit}: use 0 (all) or more")
        jobs: list[jobs_pb2.Job] = []
        request.limit = min(args.limit, 1000) if args.limit else 1000
        total = 0
        while True:
            page = client.find_jobs(request)
            total = page.total_count
            jobs.extend(page.jobs)
            if not page.next_page_token or (args.limit and len(jobs) >= args.limit):
                break
            request.page_token = page.next_page_token
        if args.limit:
            jobs = jobs[: args.limit]
        if args.json:
            render.print_json(
                {"jobs": [render.job_to_dict(j) for j in jobs], "total_count": total}, sys.stdout
            )
        else:
            render.print_jobs(jobs, sys.stdout)
            if total > len(jobs):
                print(f"({len(jobs)} of {total} shown; use --limit 0 for all)", file=sys.stderr)
        return EXIT_OK

    return _run(args, environ, body)


def cmd_job(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh job ID`."""

    def body(client: JobmeshClient) -> int:
        want_payloads = args.output is not None or args.payload_out is not None
        job = client.get_job(args.job_id, include_payloads=want_payloads, include_log=args.log)
        if args.output is not None:
            args.output.write_bytes(job.output_payload)
        if args.payload_out is not None:
            args.payload_out.write_bytes(job.payload)
        _print_job(job, args.json)
        return EXIT_OK

    return _run(args, environ, body)


def cmd_stop(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh stop ID`."""

    def body(client: JobmeshClient) -> int:
        _print_job(client.stop_job(args.job_id), args.json)
        return EXIT_OK

    return _run(args, environ, body)


def cmd_rm(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh rm ID`."""

    def body(client: JobmeshClient) -> int:
        response = client.remove_job(args.job_id)
        if args.json:
            job = render.job_to_dict(response.job) if response.HasField("job") else None
            render.print_json({"deleted": response.deleted, "job": job}, sys.stdout)
        elif response.deleted:
            print(f"deleted {args.job_id} from history")
        else:
            print(f"dropped {args.job_id}")
        return EXIT_OK

    return _run(args, environ, body)


def cmd_retry(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh retry ID`."""

    def body(client: JobmeshClient) -> int:
        _print_job(client.retry_job(args.job_id), args.json)
        return EXIT_OK

    return _run(args, environ, body)
