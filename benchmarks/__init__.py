"""Jobmesh benchmarks (scripts, not tests): see benchmarks/README.md and docs/benchmarks.md."""
