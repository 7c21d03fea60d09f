"""The analysis step: jobs from the journal through the inference engine to result objects in the outbox."""
