"""The Jobmesh test suite; shared helpers live in `tests.support` (benchmarks import them too)."""
