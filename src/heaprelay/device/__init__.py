"""Device mode: the relay stands in for Segment's and RudderStack's CDNs, so that a page whose
SDK is pointed at the relay loads Heap's own script (autocapture and all) through one small
integration of ours, and nothing from any other host.

analytics-next (``AnalyticsBrowser.load({writeKey, cdnURL: RELAY})``):

- ``GET /v1/projects/{writeKey}/settings``: ``Segment.io`` posting to the relay's ingest
  (``apiHost`` / ``protocol`` from ``[server] public_url``, else from the request), and the
  source's device-mode destination as the classic integration ``Heap``;
- ``GET /next-integrations/integrations/heap/{version}/heap.dynamic.js.gz``: the integration
  (``heapDeps = []``, ``heapLoader``, ``heapIntegration``).

RudderStack's JS SDK v3 (``load(writeKey, RELAY, {configUrl: RELAY, destSDKBaseURL:
RELAY + "/js-integrations"})``):

- ``GET /sourceConfig/`` (write key from ``?writeKey=`` or HTTP Basic; CORS preflight
  answered): the source with its device-mode destination ``HEAP`` (``Heap.io``);
- ``GET /js-integrations/Heap.min.js``: the same integration (``window.Heap_RS.Heap``).

An unknown write key is a 404 JSON ``{code, message}``. Settings are cacheable (ETag,
``max-age`` 300 s); the bundle under its version is immutable. What the integration does in
the browser: ``heap-integration.js`` here, specified in Python by
:mod:`heaprelay.transform.browser`.
"""

from heaprelay.device._bundle import Bundle, bundle
from heaprelay.device._routes import device_routes
from heaprelay.device._settings import (
    device_destination,
    integration_config,
    rudderstack_config,
    segment_settings,
)

__all__ = [
    "Bundle",
    "bundle",
    "device_destination",
    "device_routes",
    "integration_config",
    "rudderstack_config",
    "segment_settings",
]
