"""The SQLite journal: one writer with group commit (`writer`), readers (`journal`), the schema,
and one store per concept (jobs, claims, attempts, controls, events, statistics, queues,
schedules). Offloading plugs in through `hooks.JournalHook` (see docs/architecture.md)."""
