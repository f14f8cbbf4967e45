"""Real-process test harness: etcd members, a TCP proxy, polling helpers.

Public on purpose (like kazoo's harness): benchmarks and later tests import it.
"""
