"""How the durable queues store payloads: zstd-compressed with a dictionary trained on the
queue's own payloads (SQLite and PostgreSQL share this codec).

Events of one deployment repeat themselves: the same SDKs send the same context fields,
property names and user agents. Compressed one by one without a dictionary, a 930-byte event
only shrinks to about 560 bytes; with a 64 KiB dictionary trained on a couple of thousand of
the queue's own earlier payloads it becomes about 140 bytes (``bench/backlog.py`` measures
it), for a few microseconds of CPU each way.

Stored forms (a column holds either):

- raw JSON, as appended: rows written before compression existed, and every payload until
  the queue has a dictionary (or when compressing would not make it smaller);
- ``0xFE``, the dictionary's id (4 bytes, big-endian), then a magic-less zstd frame with the
  content size. ``0xFE`` never starts UTF-8 JSON, so the two cannot be confused.

Dictionaries live in the queue (table ``payload_dicts``: id, the dictionary, when it was
made), are never changed, and are kept as long as the queue (rows may refer to any of them;
one is 64 KiB and one is made per :data:`RETRAIN_EVERY` appended payloads). A process that
meets an id it does not know loads it from that table (another process trained it).
Training: the first :data:`SAMPLES` payloads appended through a codec (and again after every
:data:`RETRAIN_EVERY`) are kept as samples; the backend trains a dictionary from them off its
hot path (:meth:`PayloadCodec.take_samples`, :func:`train`), stores it, and from then on new
payloads are compressed with the newest dictionary.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Mapping
from typing import Final

import zstandard

__all__ = ["MARK", "SAMPLES", "PayloadCodec", "dictionary_ids", "train"]

MARK: Final = 0xFE
_HEADER: Final = struct.Struct(">BI")
#: Payloads sampled before a dictionary is trained.
SAMPLES: Final = 2000
#: Appended payloads after which a new dictionary is trained (traffic changes over time).
RETRAIN_EVERY: Final = 1_000_000
DICT_BYTES: Final = 64 * 1024
LEVEL: Final = 1
_PARAMS: Final = zstandard.ZstdCompressionParameters.from_level(
    LEVEL,
    format=zstandard.FORMAT_ZSTD1_MAGICLESS,
    write_content_size=True,
    write_checksum=False,
    write_dict_id=False,
)


def train(samples: Iterable[bytes]) -> bytes:
    """A dictionary trained on ``samples`` (CPU-bound: about 0.3 s for 2,000 events; run it
    off the event loop and the SQLite writer thread)."""
    return bytes(zstandard.train_dictionary(DICT_BYTES, list(samples), level=LEVEL).as_bytes())


class PayloadCodec:
    """Encodes payloads for storage and decodes stored ones. Thread-safe (each thread gets
    its own zstd contexts)."""

    def __init__(
        self,
        dictionaries: Mapping[int, bytes] = {},
        *,
        samples: int = SAMPLES,
        retrain_every: int = RETRAIN_EVERY,
    ) -> None:
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._current: int | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._want = samples
        self._retrain_every = retrain_every
        self._samples: list[bytes] = []
        self._since_trained = 0
        self._training = False
        for dict_id, data in dictionaries.items():
            self.add(dict_id, data)

    @property
    def current(self) -> int | None:
        """The id of the dictionary new payloads are compressed with (None: stored raw)."""
        return self._current

    def knows(self, dict_id: int) -> bool:
        return dict_id in self._dicts

    def add(self, dict_id: int, data: bytes) -> None:
        """Make a stored dictionary known; the newest (highest id) compresses from now on."""
        with self._lock:
            self._dicts[dict_id] = zstandard.ZstdCompressionDict(
                data, dict_type=zstandard.DICT_TYPE_FULLDICT
            )
            if self._current is None or dict_id > self._current:
                self._current = dict_id

    def encode(self, payload: bytes) -> bytes:
        self._sample(payload)
        current = self._current
        if current is None:
            return payload
        stored = _HEADER.pack(MARK, current) + self._compressor(current).compress(payload)
        return stored if len(stored) < len(payload) else payload

    def decode(self, stored: bytes) -> bytes:
        """The payload as appended. A dictionary id this codec does not know raises KeyError
        (load it with :meth:`add` first: see :func:`dictionary_ids`)."""
        if not stored or stored[0] != MARK:
            return stored
        _, dict_id = _HEADER.unpack_from(stored)
        out: bytes = self._decompressor(dict_id).decompress(stored[_HEADER.size :])
        return out

    def take_samples(self) -> list[bytes] | None:
        """The samples to train the next dictionary from, once there are enough and no
        training is under way (then the caller trains, stores and :meth:`add`\\ s it, and
        calls :meth:`training_done` either way)."""
        with self._lock:
            if self._training or len(self._samples) < self._want:
                return None
            self._training = True
            samples, self._samples = self._samples, []
            self._since_trained = 0
            return samples

    def training_done(self) -> None:
        with self._lock:
            self._training = False

    def _sample(self, payload: bytes) -> None:
        # Unlocked: a sample more or less, or a count off by one, changes nothing.
        if self._training:
            return
        if self._current is not None and self._since_trained < self._retrain_every:
            self._since_trained += 1
            return
        if len(self._samples) < self._want:
            self._samples.append(payload)

    def _compressor(self, dict_id: int) -> zstandard.ZstdCompressor:
        cache: dict[int, zstandard.ZstdCompressor] | None = getattr(self._local, "c", None)
        if cache is None:
            cache = self._local.c = {}
        c = cache.get(dict_id)
        if c is None:
            c = cache[dict_id] = zstandard.ZstdCompressor(
                dict_data=self._dicts[dict_id], compression_params=_PARAMS
            )
        return c

    def _decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor:
        cache: dict[int, zstandard.ZstdDecompressor] | None = getattr(self._local, "d", None)
        if cache is None:
            cache = self._local.d = {}
        d = cache.get(dict_id)
        if d is None:
            d = cache[dict_id] = zstandard.ZstdDecompressor(
                dict_data=self._dicts[dict_id], format=zstandard.FORMAT_ZSTD1_MAGICLESS
            )
        return d


def dictionary_ids(stored: Iterable[bytes]) -> set[int]:
    """The dictionary ids stored payloads refer to."""
    return {_HEADER.unpack_from(s)[1] for s in stored if s and s[0] == MARK}
