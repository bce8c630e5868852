"""Jobmesh against Celery, Dramatiq, Huey and RQ on one workload, in one run (`benchmarks/run-peers`)."""
