"""The queue consumer: the worker loop (after arq's) in its two roles, decode worker and
finalizer, with what keeps it honest under faults: heartbeats and health, the progress watchdog,
poison shards and redelivery limits."""
