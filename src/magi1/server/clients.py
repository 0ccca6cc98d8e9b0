"""Who a request comes from, for the per-client caps and for which jobs a client may see.

The app keeps one function, `app.state.client_identity(request) -> str`. Without API keys every request is
the one shared client. Code that authenticates requests (API keys) replaces it, e.g.

    app.state.client_identity = lambda request: bearer_key_of(request) or SHARED_CLIENT

Only a hash of the identity is stored with a job, so job.json never holds a key.
"""

from __future__ import annotations

import hashlib

SHARED_CLIENT = "shared"


def shared_client(_request) -> str:
    return SHARED_CLIENT


def client_identity(request) -> str:
    """The identity of the client that sent `request` (see the module docstring)."""
    identify = getattr(request.app.state, "client_identity", None) or shared_client
    return str(identify(request))


def client_key(identity: str) -> str:
    """What a job records about its client: a short hash."""
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:24]
