"""What contrail's tests, benchmarks and scripts share: the real stack run as subprocesses.

- ``servers``: Valkey (Redis), SeaweedFS (S3), the API and workers on free loopback ports;
- ``stack``: one deployment of them (:class:`contrail.testing.stack.Stack`) and the inputs its
  users share;
- ``faults``: counting from outside the worker what storage and Redis hold;
- ``chaos``: the chaos harness (workers, Redis, S3 and the API killed while jobs run);
- ``browser``: headless Chromium through Playwright, for the viewer.

Users can run it against their own build too (it needs the service and worker extras installed:
it starts their code by module name and imports none of it).
"""
