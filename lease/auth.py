"""etcd's own access control: users, roles and their key ranges, and turning auth on.

python3-etcd3 has no calls for etcd's Auth service (only the stub), so this
module calls the stub itself. `apply(etcd, roles, users)` makes etcd hold
exactly the given roles' permissions and gives each user its roles; it is
idempotent (run again on every start of a cluster) and needs a client that
may administer etcd: before auth is on, any client; after, the `root` user.

Users are created without a password: with `--client-cert-auth`, etcd takes
the user name from the common name (CN) of the client certificate whenever
a request carries no token, so a process's certificate is its identity and
there is no password to leak (docs/etcd-auth.md).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import grpc
from etcd3.etcdrpc import auth_pb2, rpc_pb2, rpc_pb2_grpc

from lease.client import Etcd, map_error

ROOT = "root"  # etcd requires this user, holding the built-in root role, before auth can be enabled
READ, WRITE, READWRITE = "read", "write", "readwrite"
_PERM_TYPE = {READ: auth_pb2.Permission.READ, WRITE: auth_pb2.Permission.WRITE,
              READWRITE: auth_pb2.Permission.READWRITE}
# AuthUserAddRequest.options (field 3) = UserAddOptions{no_password: true} (field 1), as wire bytes:
# the etcd3 wheel's protobufs predate the field (etcd 3.4), and protobuf keeps unknown fields.
_NO_PASSWORD = b"\x1a\x02\x08\x01"


@dataclasses.dataclass(frozen=True)
class Permission:
    """One key (range_end None) or a range [key, range_end) a role may read and/or write."""

    kind: str
    key: str
    range_end: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _PERM_TYPE:
            raise ValueError(f"permission kind {self.kind!r} is not one of {sorted(_PERM_TYPE)}")

    def message(self) -> auth_pb2.Permission:
        return auth_pb2.Permission(permType=_PERM_TYPE[self.kind], key=self.key.encode(),
                                   range_end=(self.range_end or "").encode())


@dataclasses.dataclass(frozen=True)
class Role:
    name: str
    permissions: tuple[Permission, ...]


class Admin:
    """Calls to etcd's Auth service through an `Etcd` client's channel and credentials."""

    def __init__(self, etcd: Etcd):
        self.etcd = etcd
        self.stub = rpc_pb2_grpc.AuthStub(etcd.channel())

    def _call(self, method: str, request):
        try:
            return getattr(self.stub, method)(request, self.etcd.config.timeout, **self.etcd.call_kwargs)
        except grpc.RpcError as exc:
            raise map_error(exc) from exc

    def users(self) -> set[str]:
        return set(self._call("UserList", rpc_pb2.AuthUserListRequest()).users)

    def roles(self) -> set[str]:
        return set(self._call("RoleList", rpc_pb2.AuthRoleListRequest()).roles)

    def add_user(self, name: str) -> None:
        request = rpc_pb2.AuthUserAddRequest.FromString(
            rpc_pb2.AuthUserAddRequest(name=name).SerializeToString() + _NO_PASSWORD)
        self._call("UserAdd", request)

    def user_roles(self, name: str) -> set[str]:
        return set(self._call("UserGet", rpc_pb2.AuthUserGetRequest(name=name)).roles)

    def grant_role(self, user: str, role: str) -> None:
        self._call("UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role))

    def revoke_role(self, user: str, role: str) -> None:
        self._call("UserRevokeRole", rpc_pb2.AuthUserRevokeRoleRequest(name=user, role=role))

    def add_role(self, name: str) -> None:
        self._call("RoleAdd", rpc_pb2.AuthRoleAddRequest(name=name))

    def permissions(self, role: str) -> set[Permission]:
        kinds = {v: k for k, v in _PERM_TYPE.items()}
        perms = self._call("RoleGet", rpc_pb2.AuthRoleGetRequest(role=role)).perm
        return {Permission(kinds[p.permType], p.key.decode(), p.range_end.decode() or None) for p in perms}

    def grant(self, role: str, permission: Permission) -> None:
        self._call("RoleGrantPermission",
                   rpc_pb2.AuthRoleGrantPermissionRequest(name=role, perm=permission.message()))

    def revoke(self, role: str, permission: Permission) -> None:
        self._call("RoleRevokePermission", rpc_pb2.AuthRoleRevokePermissionRequest(
            role=role, key=permission.key.encode(), range_end=(permission.range_end or "").encode()))

    def enable(self) -> None:
        self._call("AuthEnable", rpc_pb2.AuthEnableRequest())


def apply(etcd: Etcd, roles: Iterable[Role], users: Mapping[str, Iterable[str]]) -> None:
    """Make etcd hold these roles with exactly these permissions and these users
    (no password) with exactly these roles, create `root`, and turn auth on. Roles and
    users not named are left alone (other clusters may share the etcd)."""
    admin = Admin(etcd)
    existing_roles = admin.roles()
    for role in roles:
        if role.name not in existing_roles:
            admin.add_role(role.name)
            have: set[Permission] = set()
        else:
            have = admin.permissions(role.name)
        wanted = set(role.permissions)
        for extra in have - wanted:
            admin.revoke(role.name, extra)
        for missing in wanted - have:
            admin.grant(role.name, missing)
    existing_users = admin.users()
    for user, user_roles in {ROOT: (ROOT,), **users}.items():
        if user not in existing_users:
            admin.add_user(user)
            held: set[str] = set()
        else:
            held = admin.user_roles(user)
        for role_name in held - set(user_roles):
            admin.revoke_role(user, role_name)
        for role_name in set(user_roles) - held:
            admin.grant_role(user, role_name)
    admin.enable()
