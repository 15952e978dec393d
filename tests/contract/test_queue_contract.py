"""The shared queue contract, run against every backend (see conftest.py)."""

from heaprelay.testing.queue_contract import QueueContract


class TestQueue(QueueContract):
    pass
