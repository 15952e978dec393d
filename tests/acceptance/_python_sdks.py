"""What the acceptance tests that drive the Python SDKs share (imported as ``_python_sdks``:
this folder is on ``sys.path`` as pytest imports its test modules)."""

#: Python source for a driver script: with ``sdk`` ("segment" or "rudder"), ``host`` and
#: ``key`` defined, makes ``client`` (that SDK's own Client, pointed at ``host``, gzip on for
#: rudder-sdk-python as it defaults), ``VERSION`` (the SDK's) and ``errors`` (what its
#: ``on_error`` reported).
CLIENT_SETUP = r"""
errors = []
def on_error(exc, batch):
    errors.append(repr(exc))
if sdk == "segment":
    from segment.analytics.client import Client
    from segment.analytics.version import VERSION
    client = Client(key, host=host, on_error=on_error, max_retries=2)
else:
    from rudderstack.analytics.client import Client
    from rudderstack.analytics.version import VERSION
    client = Client(key, host=host, on_error=on_error, max_retries=2, gzip=True)
"""
