"""Conformance tier: every vector in tests/data/conformance, in the profile it comes from.

Helpers shared by the test modules of this folder are in ``_vectors.py`` (this folder is on
``sys.path`` because it has no ``__init__.py``; pytest inserts it when it loads this conftest).
"""
