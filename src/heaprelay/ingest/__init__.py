"""The ingest HTTP API: Segment- and RudderStack-compatible ``/v1/*`` routes.

Authenticates the write key, reads (and inflates) the body within the source's limits, checks
and enriches the messages (:mod:`heaprelay.messages.incoming`), fans each one out to the source's
destinations and answers ``200 {"success": true}`` only after the queue committed them.
"""

from heaprelay.ingest._app import IngestState, append, basic_user, fan_out, ingest_routes
from heaprelay.ingest._observer import IngestObserver

__all__ = ["IngestObserver", "IngestState", "append", "basic_user", "fan_out", "ingest_routes"]
