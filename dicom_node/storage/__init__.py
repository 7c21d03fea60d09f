"""Durable state: the spool of received instances, the SQLite journal (jobs + outbox), retention."""
