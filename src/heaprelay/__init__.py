"""heaprelay: a self-hosted Heap destination for Segment and RudderStack events.

Data flow (each stage is a subpackage with a small interface)::

    ingest (HTTP API) -> queue (durable) -> router (filter, transform, batch, deliver) -> Heap

The public API is small on purpose; everything else lives in private modules.
"""

from heaprelay.heap.models import HeapRequest
from heaprelay.messages.reasons import Reason
from heaprelay.transform import Skip, TransformResult, transform

__version__ = "0.1.0"

__all__ = ["HeapRequest", "Reason", "Skip", "TransformResult", "__version__", "transform"]
