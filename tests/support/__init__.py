"""Shared helpers of the test suite (and of the benchmarks), one concept per module.

- `waiting`: the one deadline wait, `wait_for` (blocking) and `async_wait_for` (event loop).
- `protos`: request builders made by the node's own conversions; `raw_*` for invalid values.
- `job_calls`: JobService calls through a blocking stub (`add_job`, `wait_for_state`, ...).
- `watching`: a WatchJobs stream read by a thread (`watch`, `Watcher`).
- `launcher`: real node processes (`NodeProcess`, `NodeFactory`), shared with benchmarks/.
- `topology`: named discovery nodes and their views (`create`, `start_all`, `wait_views`).
- `offload`: an origin and its workers (`start_cluster`), shared with benchmarks/.
- `worker_stream`: a remote worker a test drives by hand (`WorkerStream`).
- `in_process`: waits on an in-process `node.Node` (`job_in_state`, `finished`).
- `netlab`: the multi-host namespace lab (the conftest's `lab` and `module_lab` fixtures).
- `fuzzing`: every served method (`served_methods`) and a seeded hostile-request mutator.
- `leaks`: the thread and task leak guards the conftest applies to every test.
"""
