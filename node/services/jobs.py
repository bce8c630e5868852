"""The JobService servicer: the gRPC face of the job manager."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence

import grpc
from jobmesh.peer.v1 import gather_pb2
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

from node.durations import duration_from_seconds, optional_seconds
from node.errors import InvalidArgument, JobmeshError, Unavailable
from node.jobs.manager import JobManager
from node.jobs.validation import MAX_ID_CHARS
from node.journal.records import JobQuery
from node.model.events import EventFilter, EventType
from node.model.job import HISTORY_STATES, Job, JobState
from node.services import gather, payloads, submission
from node.services.chunking import CHUNK_BYTES
from node.services.paging import bound_kind, decode_token, encode_token
from node.services.status import rpc, status_for
from node.templates import Template
from node.topics import TopicPattern, validate_topic
from node.transport import Transport

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 10_000
# Templates compile to one SQL expression: SQLite refuses expressions nested deeper than 1000
# and statements with more than 32766 parameters.
MAX_TEMPLATES = 256
MAX_CONDITIONS = 256
# A watch filter is matched against every event, and a purge takes a list of states: bounded.
MAX_WATCH_TOPICS = 256
MAX_WATCH_JOB_IDS = 10_000
MAX_ENUM_VALUES = 64

_STATES_BY_QUERY: dict[int, tuple[JobState, ...]] = {
    jobs_pb2.QUERY_TYPE_UNSPECIFIED: tuple(JobState),
    jobs_pb2.QUERY_TYPE_ALL: tuple(JobState),
    jobs_pb2.QUERY_TYPE_ACTIVE: (JobState.ACTIVE,),
    jobs_pb2.QUERY_TYPE_QUEUED: (JobState.QUEUED,),
    jobs_pb2.QUERY_TYPE_HISTORY: HISTORY_STATES,
    jobs_pb2.QUERY_TYPE_CANCELLED: (JobState.STOPPED, JobState.GIVEN_UP, JobState.ERROR, JobState.DROPPED),
    jobs_pb2.QUERY_TYPE_SUCCEEDED: (JobState.SUCCEEDED,),
    jobs_pb2.QUERY_TYPE_STOPPED: (JobState.STOPPED,),
    jobs_pb2.QUERY_TYPE_GIVEN_UP: (JobState.GIVEN_UP,),
    jobs_pb2.QUERY_TYPE_ERROR: (JobState.ERROR,),
    jobs_pb2.QUERY_TYPE_DROPPED: (JobState.DROPPED,),
}


def _check_count(field: str, count: int, limit: int) -> None:
    if count > limit:
        raise InvalidArgument(f"{field} has {count} entries; at most {limit}")


def _require_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id is empty; pass the id AddJob returned")
    return job_id


def _after_seq(request: jobs_pb2.FindJobsRequest) -> int | None:
    """The row a FindJobs page token continues after (tokens are bound to their query)."""
    if not request.page_token:
        return None
    (seq,) = decode_token(bound_kind("jobs", request), request.page_token, (0,))
    if not isinstance(seq, int) or seq < 0:
        raise InvalidArgument("page_token is malformed; pass a next_page_token of this query unchanged")
    return seq


def query_from_proto(request: jobs_pb2.FindJobsRequest) -> JobQuery:
    """Validate a FindJobsRequest and turn it into a journal query."""
    if request.type not in _STATES_BY_QUERY:
        raise InvalidArgument(f"type {request.type} is not a known QueryType")
    if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"page_size {request.page_size} is out of range; use 1..{MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})"
        )
    if len(request.templates) > MAX_TEMPLATES:
        raise InvalidArgument(
            f"templates: {len(request.templates)} templates; a query may have at most {MAX_TEMPLATES}"
        )
    conditions = sum(len(t.conditions) for t in request.templates)
    if conditions > MAX_CONDITIONS:
        raise InvalidArgument(
            f"templates: {conditions} conditions in all; a query may have at most {MAX_CONDITIONS}"
        )
    templates = tuple(Template.from_proto(t, f"templates[{i}]") for i, t in enumerate(request.templates))
    if request.topic:
        validate_topic(request.topic, "topic")
    return JobQuery(
        states=_STATES_BY_QUERY[request.type],
        topic=request.topic or None,
        templates=templates,
        limit=request.page_size or DEFAULT_PAGE_SIZE,
        after_seq=_after_seq(request),
        newest_first=request.newest_first,
    )


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """Serves JobService from a JobManager."""

    def __init__(
        self, manager: JobManager, peers: gather.PeerList | None = None, channels: Transport | None = None
    ) -> None:
        self._manager = manager
        self._peers = peers
        self._channels = channels or Transport()

    def _job_proto(self, job: Job) -> jobs_pb2.Job:
        proto = job.to_proto()
        if job.timeout_us is None:  # no per-job timeout: the queue's applies
            queue = self._manager.queues.get(job.queue)
            if queue is not None and queue.timeout_s:
                proto.timeout.CopyFrom(duration_from_seconds(queue.timeout_s))
        return proto

    @rpc
    async def AddJob(
        self, request: jobs_pb2.AddJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.AddJobResponse:
        if not request.HasField("job"):
            raise InvalidArgument("job is missing")
        (outcome,) = await self._manager.add_proto_jobs_each([request.job])
        if isinstance(outcome, Exception):
            raise outcome
        job, deduplicated = outcome
        return jobs_pb2.AddJobResponse(job=self._job_proto(job), deduplicated=deduplicated)

    @rpc
    async def AddJobs(
        self, request: jobs_pb2.AddJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.AddJobsResponse:
        added = await self._manager.add_proto_jobs(request.jobs)
        return jobs_pb2.AddJobsResponse(
            job_ids=[a.id for a in added], deduplicated=[a.deduplicated for a in added]
        )

    async def SubmitJobs(
        self, request_iterator: AsyncIterator[jobs_pb2.SubmitJobsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.SubmitJobsResponse]:
        try:
            async for response in submission.answer(request_iterator, self._add_each):
                yield response
        except JobmeshError as e:  # a request beyond the protocol's limits
            await context.abort(status_for(e), str(e))

    async def _add_each(self, new_jobs: Sequence[jobs_pb2.NewJob]) -> list[submission.Added]:
        outcomes = await self._manager.add_proto_jobs_each(new_jobs)
        return [o if isinstance(o, Exception) else (self._job_proto(o[0]), o[1]) for o in outcomes]

    @rpc
    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        job = await self._manager.get_job(
            _require_id(request.job_id),
            include_payloads=request.include_payloads,
            include_log=request.include_log,
            inline_limit=CHUNK_BYTES,  # larger payloads come with GetPayload: a 4 MiB limit holds
        )
        proto = self._job_proto(job)
        if request.include_payloads:
            proto.payload_omitted = job.payload_size > CHUNK_BYTES
            proto.output_payload_omitted = job.output_payload_size > CHUNK_BYTES
        return jobs_pb2.GetJobResponse(job=proto)

    async def GetPayload(
        self, request: jobs_pb2.GetPayloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.GetPayloadResponse]:
        async for piece in payloads.stream_payload(self._manager, request, context):
            yield piece

    @rpc
    async def FindJobs(
        self, request: jobs_pb2.FindJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.FindJobsResponse:
        if request.scope == jobs_pb2.QUERY_SCOPE_TOPOLOGY and self._peers is not None:
            return await gather.find_jobs(
                request, self._manager.instance_id, self, self._peers, self._channels
            )
        return await self.find_local_jobs(request)

    async def find_topology_part(
        self, request: jobs_pb2.FindJobsRequest, after_id: str
    ) -> gather_pb2.FindLocalJobsResponse:
        """This node's part of a topology page: its matching jobs by id after `after_id` (at most
        page_size), with the counts per origin that let the asking node count each job once."""
        query = jobs_pb2.FindJobsRequest()
        query.CopyFrom(request)
        query.ClearField("page_token")  # the topology token was decoded by the asking node
        if len(after_id) > MAX_ID_CHARS:
            raise InvalidArgument(f"after_job_id has {len(after_id)} characters; ids are shorter")
        page = await self._manager.find_jobs(
            dataclasses.replace(query_from_proto(query), by_id=True, after_id=after_id or None)
        )
        return gather_pb2.FindLocalJobsResponse(
            page=jobs_pb2.FindJobsResponse(
                jobs=[self._job_proto(job) for job in page.jobs], total_size=page.total_count
            ),
            total_by_origin=page.total_by_origin or {},
            more=page.next_after_seq is not None,
        )

    async def find_local_jobs(self, request: jobs_pb2.FindJobsRequest) -> jobs_pb2.FindJobsResponse:
        """One page of this node's own jobs matching a query (its scope is not looked at)."""
        page = await self._manager.find_jobs(query_from_proto(request))
        return jobs_pb2.FindJobsResponse(
            jobs=[self._job_proto(job) for job in page.jobs],
            next_page_token=""
            if page.next_after_seq is None
            else encode_token(bound_kind("jobs", request), (page.next_after_seq,)),
            total_size=page.total_count,
        )

    @rpc
    async def StopJob(
        self, request: jobs_pb2.StopJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.StopJobResponse:
        job = await self._manager.stop_job(_require_id(request.job_id))
        return jobs_pb2.StopJobResponse(job=self._job_proto(job))

    @rpc
    async def RemoveJob(
        self, request: jobs_pb2.RemoveJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.RemoveJobResponse:
        job = await self._manager.remove_job(_require_id(request.job_id))
        if job is None:
            return jobs_pb2.RemoveJobResponse(deleted=True)
        return jobs_pb2.RemoveJobResponse(deleted=False, job=self._job_proto(job))

    @rpc
    async def RetryJob(
        self, request: jobs_pb2.RetryJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.RetryJobResponse:
        job = await self._manager.retry_job(_require_id(request.job_id))
        return jobs_pb2.RetryJobResponse(job=self._job_proto(job))

    async def WatchJobs(
        self, request: jobs_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobsResponse]:
        try:
            event_filter = filter_from_proto(request)
            if request.after_seq < -1:
                raise InvalidArgument(
                    f"after_seq {request.after_seq} is invalid; use -1 (live), 0 (all) or a seq"
                )
        except JobmeshError as e:
            await context.abort(status_for(e), str(e))
        try:
            async for batch in self._manager.watch(request.after_seq, event_filter):
                yield jobs_pb2.WatchJobsResponse(
                    events=[e.to_proto() for e in batch.events],
                    gap_until_seq=batch.gap_until_seq,
                    # Where this stream has read up to, not the journal's head: a client
                    # resuming from a later seq would skip matching events not yet sent.
                    head_seq=batch.last_seq,
                )
        except Unavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    @rpc
    async def GetStatistics(
        self, request: jobs_pb2.GetStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetStatisticsResponse:
        response = await self.local_statistics()
        if request.scope == jobs_pb2.QUERY_SCOPE_TOPOLOGY and self._peers is not None:
            return await gather.statistics(response, self._peers, self._channels)
        return response

    async def local_statistics(self) -> jobs_pb2.GetStatisticsResponse:
        """This node's own statistics."""
        report = await self._manager.statistics()
        response = jobs_pb2.GetStatisticsResponse()
        getattr(response, "global").CopyFrom(report.global_.to_proto())  # `global` is a Python keyword
        for name, stats in report.queues.items():
            response.queues[name].CopyFrom(stats.to_proto())
        for name, stats in report.topics.items():
            response.topics[name].CopyFrom(stats.to_proto())
        response.damaged_payloads = self._manager.store.journal.integrity.damaged_payloads
        for (target, state), count in sorted(report.offloaded.items()):
            response.offloaded.add(target_instance=target, state=int(state), jobs=count)
        for state, count in sorted(report.jobs.items()):
            response.jobs.add(state=int(state), jobs=count)
        return response

    @rpc
    async def PurgeJobs(
        self, request: jobs_pb2.PurgeJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.PurgeJobsResponse:
        _check_count("states", len(request.states), MAX_ENUM_VALUES)
        states = []
        for index, value in enumerate(request.states):
            if value not in {int(s) for s in HISTORY_STATES}:
                raise InvalidArgument(f"states[{index}] is {value}; only history states can be purged")
            states.append(JobState(value))
        if request.keep_newest < 0:
            raise InvalidArgument("keep_newest must be >= 0")
        older = optional_seconds(request, "older_than", "older_than")
        if older is not None and older < 0:
            raise InvalidArgument("older_than must not be negative")
        purged = await self._manager.purge(states, older, request.keep_newest)
        return jobs_pb2.PurgeJobsResponse(purged=purged)


def filter_from_proto(request: jobs_pb2.WatchJobsRequest) -> EventFilter:
    """Validate a WatchJobsRequest's filters."""
    _check_count("topics", len(request.topics), MAX_WATCH_TOPICS)
    _check_count("job_ids", len(request.job_ids), MAX_WATCH_JOB_IDS)
    _check_count("types", len(request.types), MAX_ENUM_VALUES)
    patterns = tuple(TopicPattern.parse(t) for t in request.topics)
    types = set()
    for index, value in enumerate(request.types):
        if value not in {int(t) for t in EventType}:
            raise InvalidArgument(f"types[{index}] is {value}, not a known JobEventType")
        types.add(EventType(value))
    return EventFilter(patterns, frozenset(request.job_ids), frozenset(types))
