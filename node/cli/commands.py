"""Client commands for jobs: `jobs`, `job`, `stop`, `rm`, `retry` (and `add`, in node.cli.add)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from jobmesh.v1 import jobs_pb2, topology_pb2

from node.cli import paging, render
from node.cli.common import EXIT_OK, client_command, client_parser, respond, write_file
from node.cli.values import parse_condition
from node.client import JobmeshClient, RpcError

QUERY_TYPES = {
    name.removeprefix("QUERY_TYPE_").lower(): number
    for name, number in jobs_pb2.QueryType.items()
    if name != "QUERY_TYPE_UNSPECIFIED"
}


def add_parsers(sub: Any) -> None:
    """Register the job subcommands."""
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
    p.add_argument("--newest", action="store_true", help="newest first")
    p.add_argument(
        "--topology",
        action="store_true",
        help="ask every live instance (one page; offloaded jobs listed once)",
    )
    paging.add_paging_options(p)
    p.set_defaults(handler=client_command(cmd_jobs))

    p = client_parser(sub, "job", "show one job (origin and target by name)")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--output", type=Path, metavar="FILE", help="write the job's output payload to FILE")
    p.add_argument(
        "--payload", dest="payload_out", type=Path, metavar="FILE", help="write its input payload to FILE"
    )
    p.add_argument("--log", action="store_true", help="also show the job's log lines")
    p.set_defaults(handler=client_command(cmd_job))

    for name, help_text, body in (
        ("stop", "stop a job (queued: at once; active: asks its consumer to stop)", cmd_stop),
        ("rm", "remove a job (queued/active: DROPPED; finished: deleted)", cmd_rm),
        ("retry", "run a finished job again", cmd_retry),
    ):
        p = client_parser(sub, name, help_text)
        p.add_argument("job_id", metavar="ID")
        p.set_defaults(handler=client_command(body))


def print_job(client: JobmeshClient, job: jobs_pb2.Job, as_json: bool) -> None:
    """One job: JSON, or field by field with its origin and target named from the topology."""
    if as_json:
        render.print_json(render.to_json(job), sys.stdout)
    else:
        render.print_job(job, sys.stdout, instance_names(client))


def instance_names(client: JobmeshClient) -> dict[str, str]:
    """Instance id -> name of the live instances the node sees (empty when it cannot tell)."""
    try:
        view = client.call(client.topology.GetTopology, topology_pb2.GetTopologyRequest()).view
    except RpcError:  # e.g. not part of a topology yet: ids alone still identify the instances
        return {}
    return {i.id: i.name for i in view.instances}


def cmd_jobs(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh jobs`."""
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
    listing = paging.fetch(client, client.jobs.FindJobs, request, "jobs", args)
    return respond(args, listing.to_json(), lambda: paging.print_listing(listing, render.print_jobs))


def cmd_job(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh job ID`."""
    want_payloads = args.output is not None or args.payload_out is not None
    job = (
        client.get_job_with_payloads(args.job_id, include_log=args.log)
        if want_payloads
        else client.get_job(args.job_id, include_log=args.log)
    )
    if args.output is not None:
        write_file(args.output, job.output_payload, "output file")
    if args.payload_out is not None:
        write_file(args.payload_out, job.payload, "payload file")
    job.ClearField("payload")  # saved to a file if asked for; never printed
    job.ClearField("output_payload")
    print_job(client, job, args.json)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh stop ID`."""
    print_job(client, client.stop_job(args.job_id), args.json)
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh rm ID`."""
    response = client.remove_job(args.job_id)
    text = f"deleted {args.job_id} from history" if response.deleted else f"dropped {args.job_id}"
    return respond(args, response, text)


def cmd_retry(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh retry ID`."""
    print_job(client, client.retry_job(args.job_id), args.json)
    return EXIT_OK
