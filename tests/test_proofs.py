"""Identity handshakes with peers (node/discovery/proofs.py), alone: cached, shared and
rate-limited. The handshake itself over real TLS is in test_security_peers.py."""

from __future__ import annotations

import asyncio

from node.discovery.proofs import ServerProofs

ADDRESS = "127.0.0.1:7001"


class Handshakes:
    """A handshake seam that counts its calls and answers what it is told, when it is told."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer: str | Exception = "peer-a"
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, address: str) -> str | None:
        self.calls += 1
        await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_a_proven_address_is_not_asked_again_for_the_same_instance() -> None:
    handshakes = Handshakes()
    proofs = ServerProofs(handshakes, recheck_s=0.0)
    assert (await proofs.proof(ADDRESS, "peer-a")).instance == "peer-a"
    for _ in range(5):
        assert (await proofs.proof(ADDRESS, "peer-a")).instance == "peer-a"
    assert handshakes.calls == 1


async def test_answers_that_arrive_together_wait_for_one_handshake_even_if_one_gives_up() -> None:
    handshakes = Handshakes()
    handshakes.gate.clear()
    proofs = ServerProofs(handshakes)
    waiting = [asyncio.ensure_future(proofs.proof(ADDRESS, "peer-a")) for _ in range(10)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # its probe timed out: the others still get the answer
    handshakes.gate.set()
    results = await asyncio.gather(*waiting[1:])
    assert {p.instance for p in results} == {"peer-a"}
    assert handshakes.calls == 1


async def test_a_handshake_that_timed_out_proves_nothing_and_is_repeated_only_after_the_recheck_time() -> (
    None
):
    # Given a peer whose identity handshake times out
    handshakes = Handshakes()
    handshakes.answer = TimeoutError()
    proofs = ServerProofs(handshakes, recheck_s=0.2)
    first = await proofs.proof(ADDRESS, "peer-a")
    assert first.instance is None
    assert first.problem == "TimeoutError"

    # When it answers again and again at once: no new handshake (a loaded peer is not loaded more)
    for _ in range(20):
        assert (await proofs.proof(ADDRESS, "peer-a")).instance is None
    assert handshakes.calls == 1

    # Then after the recheck time one handshake proves it
    handshakes.answer = "peer-a"
    await asyncio.sleep(0.25)
    assert (await proofs.proof(ADDRESS, "peer-a")).instance == "peer-a"
    assert handshakes.calls == 2


async def test_a_server_that_proved_another_instance_is_checked_again_only_after_the_recheck_time() -> None:
    handshakes = Handshakes()
    handshakes.answer = "peer-b"
    proofs = ServerProofs(handshakes, recheck_s=0.2)
    for _ in range(5):
        proof = await proofs.proof(ADDRESS, "peer-a")
        assert proof.instance == "peer-b"
        assert not proof.problem
    assert handshakes.calls == 1
    # A failed handshake later keeps what was proven, so a claim of it is still believed
    handshakes.answer = OSError("connection refused")
    await asyncio.sleep(0.25)
    proof = await proofs.proof(ADDRESS, "peer-a")
    assert (proof.instance, proof.problem) == ("peer-b", "connection refused")
    assert (await proofs.proof(ADDRESS, "peer-b")).instance == "peer-b"
    proofs.forget(ADDRESS)  # what was proven is gone: the next answer needs a handshake again
    handshakes.answer = "peer-a"
    calls = handshakes.calls
    assert (await proofs.proof(ADDRESS, "peer-b")).instance == "peer-a"
    assert handshakes.calls == calls + 1
