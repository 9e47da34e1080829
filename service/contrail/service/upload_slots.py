"""Per-tenant caps on uploads being validated at once, in this API process.

Validation is CPU work in this process (parsing, schema checks, the id index), so the process is
what the cap protects: a tenant running many uploads at once would hold the threads and the GIL
that every other tenant's requests share. A cap in Redis would count uploads on other replicas,
which cost this one nothing. The uploads beyond the cap are answered 429 with Retry-After before
their body is read.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Final

from contrail.service.errors import ApiError
from contrail.service.metrics import UPLOADS_VALIDATING

RETRY_AFTER_S: Final = 5


class UploadSlots:
    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self.busy: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """A slot for one upload of `tenant`, or 429. Only the event loop's thread calls this,
        so the counter needs no lock."""
        if self.busy[tenant] >= self.per_tenant:
            raise ApiError(
                429,
                f"{self.per_tenant} upload(s) of this tenant are being validated already; retry "
                "when one has finished",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.busy[tenant] += 1
        UPLOADS_VALIDATING.inc()
        try:
            yield
        finally:
            UPLOADS_VALIDATING.dec()
            self.busy[tenant] -= 1
            if not self.busy[tenant]:
                del self.busy[tenant]
