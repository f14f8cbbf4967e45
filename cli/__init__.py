"""The `baton` command: argument parsing, the local cluster (`baton up`), the
demo, the HTTP API client and certificates. The top of the house: it may
import every package, and no product package imports it."""
from importlib import metadata

try:
    __version__ = metadata.version("baton")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
