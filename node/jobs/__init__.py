"""The job engine: the `JobManager` (add, find, control), queue runners, consumers (local and
remote workers), schedules and retention, on top of the journal (see docs/architecture.md)."""
