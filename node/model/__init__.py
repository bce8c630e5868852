"""The job model every layer shares: jobs and their states, events, the lifecycle rule, queue
configurations and topic consumption rules. Pure values and functions: no I/O, no imports of
the journal or anything above it (see docs/architecture.md)."""
