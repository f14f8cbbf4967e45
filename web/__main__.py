"""`python -m web`: serve the UI by hand (development), configured like gunicorn's workers.

    BATON_NAME=p1 BATON_ETCD=http://127.0.0.1:2379 python -m web --bind 127.0.0.1:8000
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m web", description="Serve the Baton web UI with gunicorn.")
    parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT to listen on")
    parser.add_argument("--certfile", help="TLS certificate (HTTPS)")
    parser.add_argument("--keyfile", help="TLS private key")
    parser.add_argument("--dev", action="store_true", help="Flask's single-process development server instead")
    args = parser.parse_args(argv)
    if not os.environ.get("BATON_NAME"):
        parser.error("set BATON_NAME (this coordinator's name) and BATON_ETCD in the environment")
    if args.dev:
        from web import create_app
        host, _, port = args.bind.rpartition(":")
        ssl = (args.certfile, args.keyfile) if args.certfile else None
        create_app().run(host=host, port=int(port), ssl_context=ssl)
        return 0
    from web.serve import gunicorn_argv
    if args.certfile:
        os.environ["BATON_HTTPS"] = "1"
    os.environ.setdefault("SECRET_KEY", os.urandom(32).hex())  # one key for all workers
    argv = gunicorn_argv(args.bind, args.certfile, args.keyfile)
    os.execv(argv[0], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
