"""The integration's script as the relay serves it: the minified file shipped in the package
(built from ``heap-integration.js`` by ``scripts/build-device-js``), gzipped once."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

SOURCE_NAME: Final = "heap-integration.js"
MINIFIED_NAME: Final = "heap-integration.min.js"


@dataclass(frozen=True, slots=True)
class Bundle:
    script: bytes
    gzipped: bytes
    #: A digest of the script: the version in analytics-next's bundle URL, and the ETag.
    version: str


@cache
def bundle() -> Bundle:
    script = (resources.files("heaprelay.device") / MINIFIED_NAME).read_bytes()
    return Bundle(
        script=script,
        gzipped=gzip.compress(script, compresslevel=9, mtime=0),
        version=hashlib.sha256(script).hexdigest()[:12],
    )
