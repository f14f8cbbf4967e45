"""What the daemon serves besides the HA loop: the agents' gRPC server and the web UI's process,
and the addresses it advertises for them (in its registration and the leader key)."""
from __future__ import annotations

import socket

import grpc

from coordinator.config import CoordinatorConfig
from coordinator.runtime.aio_service import AioAgentServer
from coordinator.runtime.runtime import Runtime
from lease.errors import ConfigError


def advertised(config: CoordinatorConfig, hostport: str) -> str:
    """hostport as others reach it: --advertise-host, else this host's name for a wildcard address."""
    host, _, port = hostport.rpartition(":")
    if config.advertise_host:
        host = config.advertise_host
    elif host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"{host}:{port}"


def grpc_address(config: CoordinatorConfig) -> str:
    return advertised(config, config.grpc)


def web_address(config: CoordinatorConfig) -> str:
    scheme = "https" if config.tls_cert else "http"
    return f"{scheme}://{advertised(config, config.web)}"


def start_grpc(config: CoordinatorConfig, runtime: Runtime) -> AioAgentServer:
    """Serve the agents' streams on grpc.aio in its own thread: one event loop
    holds every stream (no thread per agent) at about half the CPU per task
    of the threaded server (bench/dispatch.py --transport). With TLS, every
    agent must show a client certificate signed by --tls-ca, and a Hello is
    accepted only for the name in it (agent_protocol.certificate_agents).
    Raises ConfigError when the address cannot be listened on."""
    creds = None
    if config.tls_cert:
        if not config.tls_ca:
            raise ConfigError("--tls-cert needs --tls-ca: with TLS on, agents prove their names with "
                              "client certificates signed by that CA (docs/design.md section 9)")
        creds = grpc.ssl_server_credentials([(_read(config.tls_key), _read(config.tls_cert))],
                                            root_certificates=_read(config.tls_ca), require_client_auth=True)
    server = AioAgentServer(runtime, config.grpc, creds)
    try:
        server.start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on --grpc {config.grpc}: {exc}") from None
    return server


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def stop_web(proc) -> None:
    """Terminate the web UI's process (gunicorn), killing it after 10 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:  # noqa: BLE001
            proc.kill()
