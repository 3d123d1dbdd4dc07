"""TLS for the client a scheduler plugin opens to its own scheduler.

Dask's ``Security`` holds one certificate per role (``client``, ``scheduler``,
``worker``: ``distributed.comm.tls.<role>.cert``). A scheduler configured for its
own role only (``dask scheduler --tls-cert ...``, or just
``distributed.comm.tls.scheduler.*`` set) has no client certificate, so a plain
``Client(address)`` made inside it cannot open a ``tls://`` connection to itself.
``client_security`` gives that client the scheduler's own security with the
scheduler's certificate standing in for a missing client one; the certificate must
then allow client authentication (no extended key usage, or ``clientAuth``), as
docs/security.md's recipe makes it.
"""

from __future__ import annotations

import copy
from typing import Any

from distributed.security import Security


def client_security(security: Security) -> Security:
    """``security`` for the client role: its client certificate, or else its scheduler's."""
    mine: Any = copy.copy(security)  # its fields are set by name: untyped
    if not mine.tls_client_cert and mine.tls_scheduler_cert:
        mine.tls_client_cert = mine.tls_scheduler_cert
        mine.tls_client_key = mine.tls_scheduler_key
    return mine
