"""Read the cluster as the HA loop sees it: one revision.

Reads the leader key, the registered coordinators, the settings, the
switchover request and the backups' contact clocks at one etcd revision
(Etcd.read_together: range reads pinned to the first one's revision, not a
read-only transaction, which can crash etcd < 3.5.5), so the snapshot is
consistent. Build and task keys are not read here (the runtime owns them).
"""
from __future__ import annotations

from cluster.keys import Keys, decode, prefix_end
from cluster.records import LeaderRecord
from cluster.settings import Settings
from coordinator.ha import Peer, Snapshot


def read_snapshot(etcd, keys: Keys) -> Snapshot:
    """One consistent snapshot. Raises lease.errors.EtcdUnavailable when etcd cannot answer."""
    leader_kvs, coord_kvs, settings_kvs, switch_kvs, contact_kvs = etcd.read_together([
        (keys.leader, None),
        (keys.coordinators, prefix_end(keys.coordinators)),
        (keys.settings, None),
        (keys.switchover, None),
        (keys.backup_contact, prefix_end(keys.backup_contact)),
    ])

    leader = None
    revision = 0
    for value, meta in leader_kvs:
        leader = LeaderRecord.parse(value, meta.create_revision, meta.lease_id)  # None: names nobody
        revision = meta.response_header.revision
    peers = {}
    for value, meta in coord_kvs:
        data = decode(value) or {}
        name = Keys.name_of(meta.key, keys.coordinators)
        peers[name] = Peer(name=name, role=data.get("role", "?"), primary=data.get("primary", ""),
                           ready=bool(data.get("ready")), grpc=data.get("grpc", ""), web=data.get("web", ""))
        revision = meta.response_header.revision
    settings = Settings.from_json(settings_kvs[0][0]) if settings_kvs else Settings()
    settings_revision = settings_kvs[0][1].mod_revision if settings_kvs else 0
    switchover = (decode(switch_kvs[0][0]) or {}).get("target") if switch_kvs else None
    switchover_revision = switch_kvs[0][1].mod_revision if switch_kvs else 0
    contact = {}
    for value, meta in contact_kvs:
        contact[Keys.name_of(meta.key, keys.backup_contact)] = float((decode(value) or {}).get("last_seen", 0))
    return Snapshot(leader=leader, coordinators=peers, settings=settings, switchover=switchover,
                    contact=contact, revision=revision, settings_revision=settings_revision,
                    switchover_revision=switchover_revision)
