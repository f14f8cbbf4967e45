"""`baton up`: start a whole cluster here (cli/local.py's LocalCluster), say where
to look, and stop everything on Ctrl-C or SIGTERM (or when etcd or a coordinator exits)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from cli.context import CONTEXT_FILE, DEFAULT_DIR
from cli.etcd_identities import CLI_IDENTITY
from cli.local import LocalCluster
from lease.errors import ConfigError


def run_up(args) -> int:
    """`baton up`: start everything, print where to look, stop all on Ctrl-C."""
    if args.agents < 0 or args.backups < 0:
        raise ConfigError("--agents and --backups must be >= 0")
    cluster = LocalCluster(args.dir or args.context, agents=args.agents, backups=args.backups, cores=args.cores, ttl=args.ttl,
                           tls=not args.no_tls, etcd_urls=args.etcd if args.etcd_given else None, cluster=args.cluster,
                           base_port=args.base_port, etcd_tls=True)  # --no-tls never opens etcd
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        print(f"starting a local Baton cluster in {cluster.dir} ...", flush=True)
        cluster.start()
        print("\nBaton is up.")
        print(f"  etcd:            {cluster.etcd_urls}")
        for name, url in cluster.web_urls.items():
            role = "primary" if name == "p1" else "backup"
            print(f"  {name} ({role}):    {url}/   (gRPC localhost:{cluster.grpc_ports[name]})")
        print(f"  agents:          {', '.join(cluster.agents)} ({cluster.cores} cores each)")
        print(f"  selected backup: {'b1' if args.backups else 'none'}")
        print(f"  log in as:       admin / {cluster.admin_password}")
        etcd_flags = f" --etcd-ca {cluster.etcd_ca}" if cluster.etcd_tls else ""
        if cluster.tls:
            print(f"  trust the CA:    {cluster.ca}  (e.g. curl --cacert {cluster.ca} ...; or import it in"
                  f" your browser)")
        if cluster.etcd_auth:
            cert, key = cluster.etcd_identities.files(CLI_IDENTITY)
            etcd_flags += f" --etcd-cert {cert} --etcd-key {key}"
            print(f"  etcd for the CLI: --etcd-cert {cert} --etcd-key {key}")
        print(f"  logs:            {cluster.dir / 'logs'}")
        print(f"  context:         {cluster.dir / CONTEXT_FILE}  (endpoints, CAs and the admin's credentials)")
        here = cluster.dir == (Path.cwd() / DEFAULT_DIR).resolve()
        print("Try: baton " + ("" if here else f"--context {cluster.dir} ")
              + "build submit examples/hello.yaml --wait")
        print("Press Ctrl-C to stop everything.", flush=True)
        while not stop["now"]:
            time.sleep(0.5)
            dead = [p.name for p in [cluster.etcd_proc, *cluster.coordinators.values()] if p and not p.alive]
            if dead:
                print(f"stopped: {', '.join(dead)} exited; see {cluster.dir / 'logs'}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping ...", flush=True)
        cluster.stop()
    return 0
