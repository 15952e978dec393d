"""Test support shipped with the package: contract suites, servers on loopback, strategies.

Users can run the same contract suites against their own setups.
"""
