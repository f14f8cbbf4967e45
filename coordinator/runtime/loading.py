"""Reading the leader's starting point from one snapshot of the cluster prefix.

Pure: takes the key-values of one range read (so every part is from the
same revision) and sorts them into what the dispatcher needs. Builds whose
build-status says done or failed are finished and not loaded again.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from coordinator.keys import Keys, decode
from coordinator.runtime.state import FINISHED
from coordinator.settings import Settings


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


def read_snapshot(kvs: Mapping[str, Any], keys: Keys) -> ClusterSnapshot:
    """kvs: key -> KV with .value and .create_revision (etcd's range response)."""
    settings_kv = kvs.get(keys.settings)
    agents, configs, statuses, records, specs = {}, {}, {}, {}, []
    for key, kv in kvs.items():
        if key.startswith(keys.agents):
            agents[Keys.name_of(key, keys.agents)] = decode(kv.value) or {}
        elif key.startswith(keys.agent_config):
            configs[Keys.name_of(key, keys.agent_config)] = kv.value
        elif key.startswith(keys.build_status):
            statuses[Keys.name_of(key, keys.build_status)] = decode(kv.value) or {}
        elif key.startswith(keys.tasks):
            build_id, _, task_id = Keys.name_of(key, keys.tasks).partition("/")
            records.setdefault(build_id, {})[task_id] = decode(kv.value)
        elif key.startswith(keys.builds):
            specs.append((kv.create_revision, Keys.name_of(key, keys.builds), kv.value))
    unfinished, finished = [], set()
    for order, build_id, raw in sorted(specs):
        status = statuses.get(build_id, {})
        if status.get("state") in FINISHED:
            finished.add(build_id)
        else:
            unfinished.append(UnfinishedBuild(decode(raw), order, records.get(build_id, {}), status))
    return ClusterSnapshot(Settings.from_json(settings_kv.value if settings_kv else None),
                           agents, configs, unfinished, finished)
