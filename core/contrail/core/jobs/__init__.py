"""The job record and the Redis queue protocol, owned in one place (see docs/OPERATIONS.md)."""
