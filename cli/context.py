"""Contexts: what a command needs to reach a `baton up` cluster, kept in its directory.

`baton up` writes <dir>/context.json (mode 0600): the etcd endpoints and the
CA that signed them, the CLI's etcd client certificate when etcd requires
one (certs/etcd/cli.pem: cli/etcd_identities.py), the CA of the web UIs, the
cluster name, and the user `admin` with the path of the file that keeps its
password (<dir>/admin-password, also 0600; the password itself is not copied).

A command run where that directory is (`.baton` in the current directory or
the nearest parent that has one, or `--context DIR`, or $BATON_CONTEXT) takes from it every option not given
as a flag or an environment variable (cli.parser.fill_defaults), so after
`baton up` a plain `baton status` works (docs/design.md section 5).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cli.processes import read_secret, write_secret
from lease.errors import ConfigError

CONTEXT_FILE = "context.json"
DEFAULT_DIR = ".baton"
# Option destinations a context may fill (the keys of context.json that are options).
OPTIONS = ("etcd", "cluster", "etcd_ca", "etcd_cert", "etcd_key", "ca")
# What `baton run` needs besides: the coordinators' gRPC CA, a client certificate
# (TLS coordinators and helpers require one) and the cluster token.
RUN_OPTIONS = ("grpc_ca", "tls_cert", "tls_key", "agent_token_file")


def write_context(directory: Path, *, etcd: str, cluster: str, etcd_ca: str | None, ca: str | None,
                  user: str, password_file: Path, etcd_cert: str | None = None,
                  etcd_key: str | None = None, run: dict[str, str] | None = None) -> Path:
    """Write <directory>/context.json for the cluster started there; returns its path."""
    directory = Path(directory).resolve()
    doc: dict[str, Any] = {"etcd": etcd, "cluster": cluster, "etcd_ca": etcd_ca, "ca": ca,
                           "etcd_cert": etcd_cert, "etcd_key": etcd_key,
                           "user": user, "password_file": str(Path(password_file).resolve()),
                           **{k: v for k, v in (run or {}).items() if k in RUN_OPTIONS}}
    path = directory / CONTEXT_FILE
    write_secret(path, json.dumps({k: v for k, v in doc.items() if v is not None}, indent=2) + "\n")
    return path


def context_dir(given: str | None) -> tuple[Path, bool]:
    """The context directory and whether it was asked for (--context or $BATON_CONTEXT).
    Else the nearest `.baton` holding a context, here or in a parent directory (as git
    finds .git), so that `baton run` in a project under the `baton up` directory finds
    the cluster; none: `.baton` here (which holds none)."""
    explicit = given or os.environ.get("BATON_CONTEXT")
    if explicit:
        return Path(explicit), True
    here = Path.cwd()
    for directory in (here, *here.parents):
        if (directory / DEFAULT_DIR / CONTEXT_FILE).is_file():
            return directory / DEFAULT_DIR, False
    return Path(DEFAULT_DIR), False


def load_context(given: str | None) -> dict[str, Any]:
    """The context's options and credentials ({} when the default directory has none).
    Raises ConfigError when a directory that was asked for has no readable context."""
    directory, explicit = context_dir(given)
    path = directory / CONTEXT_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{directory} holds no {CONTEXT_FILE}: run `baton up --dir {directory}` "
                              "there first, or give --etcd and the other options") from None
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the context {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"the context {path} is not a JSON object")
    found = {k: doc[k] for k in OPTIONS + RUN_OPTIONS if isinstance(doc.get(k), str)}
    if isinstance(doc.get("user"), str):
        found["user"] = doc["user"]
        password_file = doc.get("password_file")
        if isinstance(password_file, str):
            found["password"] = read_secret(Path(password_file))
    return found
