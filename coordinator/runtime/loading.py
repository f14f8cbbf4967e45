"""Reading the leader's starting point.

`read_starting_point` does the etcd reads (all at one revision, skipping the
history of finished builds); `read_snapshot` is pure: it sorts those
key-values into what the dispatcher needs. Builds whose build-status says
done, failed or cancelled are finished and not loaded again; the
cancellations asked for (build-cancel/<id>) are read with the rest, so a new
leader finishes cancelling what its predecessor had begun.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

from cluster.keys import Keys, decode, prefix_end
from cluster.names import is_name
from cluster.records import BUILD_ENDED
from cluster.settings import Settings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class UnfinishedBuild:
    spec: dict
    order: int                       # create revision of builds/<id>: submission order
    records: dict[str, dict]         # task id -> tasks/<id>/<task> record
    status: dict                     # build-status/<id>, {} if never written


@dataclasses.dataclass
class ClusterSnapshot:
    settings: Settings
    agents: dict[str, dict]          # present agents: name -> agents/<name> value
    agent_configs: dict[str, bytes]  # name -> agent-config/<name> raw value
    unfinished: list[UnfinishedBuild]
    finished: set[str]
    cancels: set[str] = dataclasses.field(default_factory=set)   # build ids with build-cancel/<id>


def read_snapshot(kvs: Mapping[str, Any], keys: Keys) -> ClusterSnapshot:
    """kvs: key -> KV with .value and .create_revision (etcd's range response,
    or a warm Mirror's entries, which also carry the value already .decoded)."""
    settings_kv = kvs.get(keys.settings)
    agents, configs, statuses, records, specs, cancels = {}, {}, {}, {}, [], set()
    for key, kv in kvs.items():
        if key.startswith(keys.agents):
            name = Keys.name_of(key, keys.agents)
            if is_name(name):  # else not an agent Baton made (docs/design.md section 9); skipped
                agents[name] = decoded(kv) or {}
        elif key.startswith(keys.agent_config):
            name = Keys.name_of(key, keys.agent_config)
            if is_name(name):
                configs[name] = kv.value
        elif key.startswith(keys.build_status):
            statuses[Keys.name_of(key, keys.build_status)] = decoded(kv) or {}
        elif key.startswith(keys.build_cancels):
            cancels.add(Keys.name_of(key, keys.build_cancels))
        elif key.startswith(keys.tasks):
            build_id, _, task_id = Keys.name_of(key, keys.tasks).partition("/")
            records.setdefault(build_id, {})[task_id] = decoded(kv)
        elif key.startswith(keys.builds):
            specs.append((kv.create_revision, Keys.name_of(key, keys.builds), kv))
    unfinished, finished = [], set()
    for order, build_id, kv in sorted(specs, key=lambda spec: spec[:2]):
        status = statuses.get(build_id, {})
        if status.get("state") in BUILD_ENDED:
            finished.add(build_id)
        else:
            unfinished.append(UnfinishedBuild(decoded(kv), order, records.get(build_id, {}), status))
    return ClusterSnapshot(Settings.from_json(settings_kv.value if settings_kv else None),
                           agents, configs, unfinished, finished, cancels - finished)


def decoded(kv: Any) -> Any:
    """A KV's JSON value: decoded now, or as a warm Mirror decoded it when it
    arrived. A value that is not JSON (written by hand, not by Baton) counts
    as missing, so one bad key cannot stop a takeover."""
    value = getattr(kv, "decoded", _NOT_YET)
    if value is not _NOT_YET:
        return value
    try:
        return decode(kv.value)
    except ValueError:
        log.error("%s does not hold JSON; ignored", kv.key.decode() if isinstance(kv.key, bytes) else kv.key)
        return None


_NOT_YET = object()


def read_starting_point(etcd, keys: Keys) -> tuple[dict[str, Any], int]:
    """Everything the leader needs, at one revision, without the history.

    Finished builds' specs and task records are not read: a farm that has
    run thousands of builds must not make every takeover read them all
    (a whole-prefix read grew to 20 MB and seconds in the failover
    benchmark). Reads: agents, agent-config and build-status in one range;
    settings; builds/ keys only; then spec and task records of each
    unfinished build, all at the first read's revision. (The first range also
    holds build-cancel/.)
    """
    k = keys
    first = etcd.range_response(k.root, k.builds)  # agent-config/ agents/ backup-contact/ build-cancel/ build-status/
    revision = first.header.revision
    kvs = {kv.key.decode(): kv for kv in first.kvs}
    settings = etcd.range_response(k.settings, revision=revision)
    kvs.update({kv.key.decode(): kv for kv in settings.kvs})
    specs = etcd.range_response(k.builds, prefix_end(k.builds), revision=revision, keys_only=True)
    finished = {Keys.name_of(key, k.build_status) for key, kv in kvs.items()
                if key.startswith(k.build_status) and (decoded(kv) or {}).get("state") in BUILD_ENDED}
    for kv in specs.kvs:
        key = kv.key.decode()
        build_id = Keys.name_of(key, k.builds)
        if build_id in finished:
            kvs[key] = kv  # keys only: enough to know it is finished
            continue
        spec = etcd.range_response(key, revision=revision)
        kvs.update({kv.key.decode(): kv for kv in spec.kvs})
        tasks = etcd.range_response(k.build_tasks(build_id), prefix_end(k.build_tasks(build_id)),
                                    revision=revision)
        kvs.update({kv.key.decode(): kv for kv in tasks.kvs})
    return kvs, revision
