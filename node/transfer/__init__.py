"""Offloading: choose a target for each job, stream jobs to it and its reports back (see DESIGN.md)."""
