"""The `baton` command: argument parsing, the local cluster (`baton up`), the
demo, the HTTP API client and certificates. The top of the house: it may
import every package, and no product package imports it."""
