"""The `baton` command: argument parsing, the local cluster (`baton up`), the
demo, the HTTP API client, certificates, and `baton run`/`baton cc`. The top
of the house: it may import every package, and no product package imports it."""


def __getattr__(name: str):
    # Lazy: `baton cc` runs once per compile and must not pay for package metadata.
    if name == "__version__":
        from importlib import metadata

        try:
            return metadata.version("baton")
        except metadata.PackageNotFoundError:  # a checkout that was never installed
            return "0+unknown"
    raise AttributeError(name)
