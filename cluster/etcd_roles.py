"""Who may read and write which etcd keys: the one definition (docs/design.md section 9).

Pure functions of the cluster name (and an agent's or coordinator's name)
returning lease.auth Roles. `baton up` applies them (cli/local.py with
lease.auth.apply); docs/etcd-auth.md shows the same as etcdctl commands for
an operator's own etcd, and `etcdctl_commands` prints them for any cluster.

- coordinator: reads and writes the whole cluster prefix (state, users,
  leader election). The web UI runs in the coordinator's processes with its
  credentials. etcd checks a lease revoke against the keys attached to the
  lease, so a coordinator may revoke another coordinator's session lease
  (all its keys are under the prefix).
- agent (shared): reads the leader key (whom to follow) and coordinators/
  (their addresses), nothing else: not users/, not builds.
- agent-<name>: writes (and reads) its own presence key agents/<name> only.
- agent-pool: the replicas of a scaled agent service (docker-compose.yml),
  named after their container ids, unknown in advance: they share one user
  that writes (and reads) any key under agents/, the same trade-off as their
  shared gRPC pool certificate (deploy/README.md, "More agents"). Still no
  users/, builds, leader or coordinator key.
- status: the CLI's one direct read, finding the web address
  (cli/api_client.py find_web_url): the leader key and coordinators/.

Users are named `<cluster>/<role>/<process>`: names never contain '/', so
two clusters sharing one etcd never share a user. With client-certificate
authentication the user is the common name of the process's certificate,
which X.509 limits to 64 characters.
"""
from __future__ import annotations

from cluster.keys import Keys, prefix_end
from lease.auth import READ, READWRITE, ROOT, Permission, Role
from lease.errors import ConfigError

MAX_USER = 64  # X.509 upper bound of a common name
AGENT_POOL = "agent-pool"  # never an agent's user: those are <cluster>/agent/<name>


def _role(cluster: str, *parts: str) -> str:
    return "/".join((cluster, *parts))


def coordinator_role(cluster: str) -> Role:
    keys = Keys(cluster)
    return Role(_role(cluster, "coordinator"), (Permission(READWRITE, keys.root, prefix_end(keys.root)),))


def _readers(cluster: str, role: str) -> Role:
    keys = Keys(cluster)
    return Role(_role(cluster, role), (Permission(READ, keys.leader),
                                       Permission(READ, keys.coordinators, prefix_end(keys.coordinators))))


def agent_shared_role(cluster: str) -> Role:
    return _readers(cluster, "agent")


def agent_own_role(cluster: str, agent: str) -> Role:
    return Role(_role(cluster, "agent", agent), (Permission(READWRITE, Keys(cluster).agent(agent)),))


def agent_pool_role(cluster: str) -> Role:
    keys = Keys(cluster)
    return Role(_role(cluster, AGENT_POOL), (Permission(READWRITE, keys.agents, prefix_end(keys.agents)),))


def status_role(cluster: str) -> Role:
    return _readers(cluster, "status")


def _user(name: str) -> str:
    if len(name) > MAX_USER:
        raise ConfigError(f"etcd user {name!r} is longer than {MAX_USER} characters, the most a "
                          "certificate's common name holds: use shorter cluster or process names")
    return name


def coordinator_user(cluster: str, name: str) -> str:
    return _user(_role(cluster, "coordinator", name))


def agent_user(cluster: str, name: str) -> str:
    return _user(_role(cluster, "agent", name))


def agent_pool_user(cluster: str) -> str:
    return _user(_role(cluster, AGENT_POOL))


def status_user(cluster: str) -> str:
    return _user(_role(cluster, "cli"))


def cluster_access(cluster: str, coordinators: list[str], agents: list[str],
                   agent_pool: bool = False) -> tuple[list[Role], dict[str, list[str]]]:
    """Every role of the cluster and every user with its roles: what lease.auth.apply takes.
    agent_pool: also the shared user of a scaled agent service."""
    roles = [coordinator_role(cluster), agent_shared_role(cluster), status_role(cluster),
             *(agent_own_role(cluster, a) for a in agents)]
    users = {status_user(cluster): [status_role(cluster).name]}
    users.update({coordinator_user(cluster, c): [coordinator_role(cluster).name] for c in coordinators})
    users.update({agent_user(cluster, a): [agent_shared_role(cluster).name, agent_own_role(cluster, a).name]
                  for a in agents})
    if agent_pool:
        roles.append(agent_pool_role(cluster))
        users[agent_pool_user(cluster)] = [agent_shared_role(cluster).name, agent_pool_role(cluster).name]
    return roles, users


def etcdctl_commands(cluster: str, coordinators: list[str], agents: list[str],
                     agent_pool: bool = False) -> list[str]:
    """The same set-up as etcdctl commands (add the connection flags of an etcd admin)."""
    roles, users = cluster_access(cluster, coordinators, agents, agent_pool)
    lines = [f"etcdctl user add {ROOT} --no-password", f"etcdctl user grant-role {ROOT} {ROOT}"]
    for role in roles:
        lines.append(f"etcdctl role add {role.name}")
        for perm in role.permissions:
            whole = " --prefix" if perm.range_end == prefix_end(perm.key) else ""
            end = f" {perm.range_end}" if perm.range_end and not whole else ""
            lines.append(f"etcdctl role grant-permission {role.name} {perm.kind} {perm.key}{end}{whole}")
    for user, user_roles in users.items():
        lines.append(f"etcdctl user add {user} --no-password")
        lines += [f"etcdctl user grant-role {user} {r}" for r in user_roles]
    lines.append("etcdctl auth enable")
    return lines


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 4:
        sys.exit("usage: python -m cluster.etcd_roles CLUSTER COORDINATOR[,...] AGENT[,...]")
    print("\n".join(etcdctl_commands(sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","))))
