"""Benchmarks, plots and the dev servers they (and the e2e tests) start. Never imported by the backend."""
