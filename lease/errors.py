"""The few named errors that etcd and configuration problems become.

Everything that talks to etcd maps client errors (grpc.RpcError and the
etcd3 library's exceptions) into these at the edge, in lease.client, so
callers handle one small hierarchy and users see one clear sentence.
"""


class BatonError(Exception):
    """Base of every error Baton raises on purpose."""


class ConfigError(BatonError, ValueError):
    """A configuration value is invalid; the message names the rule broken."""


class EtcdError(BatonError):
    """etcd answered with an error we do not have a more precise name for."""


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered within the timeout (down, cut off or no quorum)."""


class EtcdAuthError(EtcdError):
    """etcd refused our credentials or certificate."""


class LeaseLost(EtcdError):
    """The session's lease is gone: expired, revoked, or not renewed in time."""


class NotLeader(EtcdError):
    """A fenced transaction failed: the leader key's create revision is not our epoch."""
