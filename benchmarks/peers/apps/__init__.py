"""The peers' task modules, imported by their default workers (run in benchmarks/peers/.venv).

Each module defines the two tasks of the workload for one library, on the Redis server that
`benchmarks/peers/main.py` started (its unix socket is in `PEERS_REDIS_SOCKET`):

    noop()      counts itself done (INCR), nothing else
    timed(t0)   pushes its start time minus `t0` (the producer's clock before the add call)
"""
