"""The transfer outbox and frame application on a real journal: idempotence and epoch fencing."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

import pytest
from jobmesh.peer.v1 import transfer_pb2
from jobmesh.v1 import jobs_pb2

from node.errors import InvalidArgument
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.model.job import JobState
from node.transfer.apply import Arrival
from node.transfer.chunks import ChunkAssembler, crc32
from node.transfer.frames import ChunkCursor
from node.transfer.store import TransferStore


def _record(job_id: str, origin: str, target: str | None) -> NewJobRecord:
    return NewJobRecord(
        id=job_id,
        topic="t/a",
        properties_json=None,
        queue="main",
        origin=origin,
        target=target,
        max_retries=0,
        created_us=1,
        payload=b"in",
    )


def _report(job_id: str, epoch: int, seq: int) -> transfer_pb2.JobReport:
    return transfer_pb2.JobReport(
        job_id=job_id,
        epoch=epoch,
        report_seq=seq,
        state=jobs_pb2.JOB_STATE_SUCCEEDED,
        finished_us=9,
        result_message=f"epoch {epoch}",
        output_crc32=0,
    )


async def test_reports_of_an_old_epoch_are_rejected_and_a_duplicate_report_applies_once(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path / "origin.sqlite")
    try:
        # Given a job offloaded to `peer`, then reassigned to `peer2` (epoch 1)
        jobs = JobStore(journal)
        store = TransferStore(journal, jobs, "origin")
        await jobs.add_jobs([_record("j1", "origin", "peer")])
        assert await store.peers() == ["peer"]
        assert await store.assign(lambda _t, _q: "peer2", 5, from_peer="peer") == 1
        assert await store.peers() == ["peer2"]

        # When the old target reports success under epoch 0
        stale = transfer_pb2.ExchangeRequest(sender_id="peer", last_seq=1, reports=[_report("j1", 0, 1)])
        assert not (await store.apply(stale, {}, 10)).ended

        # Then it is rejected; the new target's report ends the job, once
        job = await jobs.get_job("j1")
        assert (job.state, job.target_instance) == (JobState.QUEUED, "peer2")
        good = transfer_pb2.ExchangeRequest(sender_id="peer2", last_seq=3, reports=[_report("j1", 1, 3)])
        assert (await store.apply(good, {}, 11)).ended == {"peer2": 1}
        assert not (await store.apply(good, {}, 12)).ended
        job = await jobs.get_job("j1")
        assert (job.state, job.result_message) == (JobState.SUCCEEDED, "epoch 1")
        finished = await journal.read(
            lambda c: c.execute("SELECT count(*) FROM job_events WHERE type = 4").fetchone()[0]
        )
        assert finished == 1
    finally:
        journal.close()


async def test_a_received_job_is_applied_once_per_origin_job_and_epoch(tmp_path: Path) -> None:
    origin_journal = Journal.open(tmp_path / "origin.sqlite")
    target_journal = Journal.open(tmp_path / "target.sqlite")
    try:
        origin_jobs = JobStore(origin_journal)
        origin = TransferStore(origin_journal, origin_jobs, "origin")
        await origin_jobs.add_jobs([_record("j1", "origin", "target")])
        frame = await origin.next_frame("target", 0, 100, 1 << 20)
        assert frame is not None
        assert [j.payload for j in frame.jobs] == [b"in"]

        target_jobs = JobStore(target_journal)
        target = TransferStore(target_journal, target_jobs, "target")
        place = {"t/a": Arrival("main", "target")}
        assert (await target.apply(frame, place, 5)).jobs_added == 1
        assert (await target.apply(frame, place, 6)).jobs_added == 0  # resent after a lost ack

        job = await target_jobs.get_job("j1", include_payloads=True)
        assert (job.origin_instance, job.target_instance, job.payload) == ("origin", "target", b"in")
        await origin.drop("target", frame.last_seq)
        assert await origin.peers() == []
    finally:
        origin_journal.close()
        target_journal.close()


async def test_a_stop_or_remove_at_the_origin_reaches_the_target_once_and_only_for_its_epoch(
    tmp_path: Path,
) -> None:
    origin_journal = Journal.open(tmp_path / "origin.sqlite")
    target_journal = Journal.open(tmp_path / "target.sqlite")
    try:
        # Given two jobs offloaded to `target` and received there (queued)
        origin_jobs = JobStore(origin_journal)
        origin = TransferStore(origin_journal, origin_jobs, "origin")
        await origin_jobs.add_jobs([_record(j, "origin", "target") for j in ("j1", "j2")])
        target_jobs = JobStore(target_journal)
        target = TransferStore(target_journal, target_jobs, "target")
        place = {"t/a": Arrival("main", "target")}
        frame = await origin.next_frame("target", 0, 100, 1 << 20)
        assert frame is not None
        await target.apply(frame, place, 5)
        await origin.drop("target", frame.last_seq)

        # When the origin stops j1 and removes j2
        assert (await origin_jobs.stop("j1", 6)).state is JobState.STOPPED
        assert (await origin_jobs.remove("j2", 6)) is not None
        controls = await origin.next_frame("target", frame.last_seq, 100, 1 << 20)
        assert controls is not None
        assert [(c.job_id, c.epoch, c.remove) for c in controls.controls] == [
            ("j1", 0, False),
            ("j2", 0, True),
        ]

        # Then the target stops and drops them, once, even when the frame comes again
        assert (await target.apply(controls, place, 7)).stop_running == ()
        assert (await target.apply(controls, place, 8)).stop_running == ()
        assert (await target_jobs.get_job("j1")).state is JobState.STOPPED
        assert (await target_jobs.get_job("j2")).state is JobState.DROPPED
        stopped = await target_journal.read(
            lambda c: c.execute("SELECT count(*) FROM job_events WHERE type = 7").fetchone()[0]
        )
        assert stopped == 1

        # And a control for another epoch changes nothing
        await origin_jobs.add_jobs([_record("j3", "origin", "target")])
        again = await origin.next_frame("target", controls.last_seq, 100, 1 << 20)
        assert again is not None
        await target.apply(again, place, 9)
        stale = transfer_pb2.ExchangeRequest(
            sender_id="origin", last_seq=99, controls=[transfer_pb2.JobControl(job_id="j3", epoch=1)]
        )
        await target.apply(stale, place, 10)
        assert (await target_jobs.get_job("j3")).state is JobState.QUEUED
    finally:
        origin_journal.close()
        target_journal.close()


async def test_a_job_stopped_while_its_gone_target_ran_it_ends_stopped_instead_of_moving(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path / "origin.sqlite")
    try:
        jobs = JobStore(journal)
        store = TransferStore(journal, jobs, "origin")
        records = [_record(j, "origin", "peer") for j in ("j1", "j2", "j3")]
        await jobs.add_jobs([dataclasses.replace(r, max_retries=1) for r in records[:2]] + records[2:])
        await journal.write(lambda c: c.execute("UPDATE jobs SET state = 2"))  # all started on `peer`
        await jobs.stop("j1", 5)  # stop requested while it runs there

        assert await store.assign(lambda _t, _q: "peer2", 6, from_peer="peer") == 1

        assert (await jobs.get_job("j1")).state is JobState.STOPPED
        # the attempt lost with the target counts as failed: j2 retries elsewhere, j3 had no retry
        moved = await jobs.get_job("j2")
        assert (moved.state, moved.target_instance, moved.retry_count) == (JobState.QUEUED, "peer2", 1)
        spent = await jobs.get_job("j3")
        assert (spent.state, spent.retry_count) == (JobState.GIVEN_UP, 1)
    finally:
        journal.close()


async def _stream(
    sender: TransferStore, receiver: TransferStore, peer: str, assembler: ChunkAssembler, *, max_bytes: int
) -> list[transfer_pb2.ExchangeRequest]:
    """Frames from `sender` to `receiver` until the outbox is empty, as the offloader sends them."""
    sent: list[transfer_pb2.ExchangeRequest] = []
    after, cursor = 0, None
    while (
        frame := await sender.next_frame(peer, after, 100, max_bytes, chunk_bytes=CHUNK, resume=cursor)
    ) is not None:
        sent.append(transfer_pb2.ExchangeRequest.FromString(frame.SerializeToString()))
        await receiver.apply(frame, {"t/a": Arrival("main", receiver.local_id)}, 5, assembler)
        await sender.drop(peer, frame.last_seq)
        after, cursor = frame.last_seq, ChunkCursor.after(frame)
    return sent


CHUNK = 64 * 1024


async def test_a_large_payload_travels_in_bounded_chunks_and_arrives_byte_identical(tmp_path: Path) -> None:
    origin_journal = Journal.open(tmp_path / "origin.sqlite")
    target_journal = Journal.open(tmp_path / "target.sqlite")
    try:
        # Given a job with a payload of many chunks between two small ones
        origin_jobs = JobStore(origin_journal)
        origin = TransferStore(origin_journal, origin_jobs, "origin")
        payload = os.urandom(10 * CHUNK + 123)
        big = dataclasses.replace(_record("big", "origin", "target"), payload=payload)
        await origin_jobs.add_jobs([_record("a", "origin", "target"), big])
        await origin_jobs.add_jobs([_record("b", "origin", "target")])
        target_jobs = JobStore(target_journal)
        target = TransferStore(target_journal, target_jobs, "target")

        # When the origin streams its outbox, with frames of at most 3 chunks
        frames = await _stream(origin, target, "target", ChunkAssembler(1 << 20), max_bytes=3 * CHUNK)

        # Then every frame stays bounded, the chunks travel before their item, and all arrive intact
        assert all(f.ByteSize() < 3 * CHUNK + 4096 for f in frames)
        chunk_frames = [f for f in frames if f.chunks]
        assert len(chunk_frames) == 4
        assert all(not f.jobs for f in chunk_frames)
        (item,) = [j for f in frames for j in f.jobs if j.job_id == "big"]
        assert item.payload_chunked
        assert not item.payload
        for job_id, expected in (("a", b"in"), ("big", payload), ("b", b"in")):
            job = await target_jobs.get_job(job_id, include_payloads=True)
            assert job.payload == expected
        assert await origin.peers() == []

        # And the output of many chunks comes back with the job's report the same way
        output = os.urandom(7 * CHUNK + 5)

        def finish(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE jobs SET state = 3, finished_us = 9, output_size = ? WHERE id = 'big'", (len(output),)
            )
            c.execute(
                "INSERT INTO payloads (job_seq, kind, data, crc32) SELECT seq, 2, ?, jobmesh_crc32(?) "
                "FROM jobs WHERE id = 'big'",
                (output, output),
            )
            c.execute("INSERT INTO outbox (peer, kind, job_id, epoch) VALUES ('origin', 2, 'big', 0)")

        await target_journal.write(finish)
        frames = await _stream(target, origin, "origin", ChunkAssembler(1 << 20), max_bytes=3 * CHUNK)
        assert len([f for f in frames if f.chunks]) == 3
        (report,) = [r for f in frames for r in f.reports]
        assert report.output_chunked
        job = await origin_jobs.get_job("big", include_payloads=True)
        assert job.state is JobState.SUCCEEDED
        assert job.output_payload == output
    finally:
        origin_journal.close()
        target_journal.close()


def _chunks(payload: bytes, size: int) -> list[transfer_pb2.PayloadChunk]:
    return [
        transfer_pb2.PayloadChunk(
            job_id="j1",
            epoch=2,
            offset=offset,
            total_size=len(payload),
            data=payload[offset : offset + size],
            data_crc32=crc32(payload[offset : offset + size]),
        )
        for offset in range(0, len(payload), size)
    ]


def test_chunk_reassembly_verifies_every_chunk_and_the_whole_payload() -> None:
    payload = os.urandom(1000)
    assembler = ChunkAssembler(max_bytes=4096)

    # A corrupted chunk is rejected
    chunks = _chunks(payload, 300)
    corrupted = transfer_pb2.PayloadChunk()
    corrupted.CopyFrom(chunks[1])
    corrupted.data = bytes([corrupted.data[0] ^ 0xFF]) + corrupted.data[1:]  # always differs
    assembler.add(chunks[0])
    with pytest.raises(InvalidArgument, match="checksum"):
        assembler.add(corrupted)

    # A partial payload is discarded; resent from offset 0 it reassembles intact
    with pytest.raises(InvalidArgument, match="out of order"):
        assembler.add(chunks[2])
    for chunk in chunks[:2]:
        assembler.add(chunk)
    with pytest.raises(InvalidArgument, match="incomplete"):
        assembler.take("j1", 2, False, crc32(payload))
    for chunk in chunks:
        assembler.add(chunk)
    assert assembler.take("j1", 2, False, crc32(payload)) == payload

    # A whole-payload checksum that does not match, another item, or too large a payload is rejected
    for chunk in chunks:
        assembler.add(chunk)
    with pytest.raises(InvalidArgument, match="checksum"):
        assembler.take("j1", 2, False, crc32(payload) ^ 1)
    for chunk in chunks:
        assembler.add(chunk)
    with pytest.raises(InvalidArgument, match="incomplete"):
        assembler.take("j1", 3, False, crc32(payload))
    with pytest.raises(InvalidArgument, match="limit"):
        ChunkAssembler(max_bytes=999).add(chunks[0])

    # A frame whose chunked item has no chunks before it is rejected
    frame = transfer_pb2.ExchangeRequest(
        jobs=[
            transfer_pb2.OffloadedJob(
                job_id="j1", epoch=2, payload_chunked=True, payload_crc32=crc32(payload)
            )
        ]
    )
    with pytest.raises(InvalidArgument, match="incomplete"):
        assembler.resolve(frame)


async def test_queued_jobs_their_origin_stopped_end_stopped_and_the_others_it_disowned_dropped(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path / "target.sqlite")
    try:
        # Given three jobs of origin "o" queued on this target (epoch 0)
        jobs = JobStore(journal)
        store = TransferStore(journal, jobs, "target")
        await jobs.add_jobs([_record(job_id, "o", "target") for job_id in ("stopped", "removed", "kept")])
        answers = [
            transfer_pb2.ReconcileAnswer(
                job_id="stopped", epoch=0, status=transfer_pb2.RECONCILE_STATUS_STOPPED
            ),
            transfer_pb2.ReconcileAnswer(
                job_id="removed", epoch=0, status=transfer_pb2.RECONCILE_STATUS_REMOVED
            ),
            transfer_pb2.ReconcileAnswer(job_id="kept", epoch=0, status=transfer_pb2.RECONCILE_STATUS_YOURS),
        ]
        # When the origin answers a reconcile question: stopped, removed, still this node's
        assert await store.drop_fenced("o", answers, 5) == 2
        # Then the stopped one ends as the origin's stop would end it, the removed one dropped
        states = {j: (await jobs.get_job(j)).state for j in ("stopped", "removed", "kept")}
        assert states == {"stopped": JobState.STOPPED, "removed": JobState.DROPPED, "kept": JobState.QUEUED}
        assert "stopped at the origin o" in (await jobs.get_job("stopped")).result_message
    finally:
        journal.close()
