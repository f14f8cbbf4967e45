"""Baton: a build-farm coordinator with a hot backup.

Metadata lives in pyproject.toml; this file exists so that
`pip install -e .` also works with older tooling.
"""
from setuptools import setup

setup()
