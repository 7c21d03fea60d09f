"""Harnesses for tests, benchmarks and the demo (a local Orthanc, a receive-only SCP); the node never imports this package."""
