"""A small HTTP client for the coordinator's JSON API, used by the `baton` CLI.

Commands that change settings or users go through the leading primary's API,
builds and their cancellation through the coordinator serving agents (the
leader, whatever its role), with a user's credentials (docs/design.md
section 5), never around it. The client finds the web address in etcd (the leader key, else any
registered coordinator) unless --url is given.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cluster.keys import Keys
from cluster.records import CoordinatorRecord, LeaderRecord


class ApiError(Exception):
    """The API refused a request; the message is the server's sentence."""

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


def find_web_url(etcd, keys: Keys, prefer_leader: bool = True) -> str:
    """The leader's web address, else the primary's, else any coordinator's."""
    if prefer_leader:
        raw, meta = etcd.get(keys.leader)
        leader = LeaderRecord.parse(raw, meta.create_revision) if raw else None
        if leader and leader.web:
            return leader.web
    coordinators = [CoordinatorRecord.parse(v, Keys.name_of(meta.key, keys.coordinators))
                    for v, meta in etcd.get_prefix(keys.coordinators)]
    coordinators = sorted((c for c in coordinators if c is not None), key=lambda c: c.role != "primary")
    for c in coordinators:
        if c.web:
            return c.web
    raise ApiError(0, "no coordinator is registered in etcd for this cluster")


class ApiClient:
    def __init__(self, base_url: str, user: str | None = None, password: str | None = None,
                 ca: str | None = None, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.user = user if user is not None else os.environ.get("BATON_USER")
        self.password = password if password is not None else os.environ.get("BATON_PASSWORD")
        ca = ca or os.environ.get("BATON_CA")
        self.context = ssl.create_default_context(cafile=ca) if ca else None
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                content_type: str = "application/json") -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        if self.user and self.password:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                parsed = json.loads(payload)
                message = parsed.get("error") or str(parsed)
            except ValueError:
                parsed, message = None, payload.decode(errors="replace")[:200] or err.reason
            if err.code == 413:  # the server's limit (1 MiB for builds): say so in the words users search for
                message = f"the request is too large for the server ({message})"
            raise ApiError(err.code, f"{err.code}: {message}", parsed) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ApiError(0, f"cannot reach {self.base_url}: {reason}") from None
        except http.client.HTTPException as err:
            # e.g. the coordinator died mid-answer (IncompleteRead): the request may or may not have taken effect.
            raise ApiError(0, f"{self.base_url} broke off its answer ({type(err).__name__}); "
                              "the request may or may not have been applied") from None
        return json.loads(payload) if payload else None

    def status(self) -> dict:
        return self.request("GET", "/api/v1/status")

    def select_backup(self, name: str | None) -> dict:
        return self.request("PUT", "/api/v1/settings", {"selected_backup": name})

    def switchover(self, target: str | None = None) -> dict:
        return self.request("POST", "/api/v1/switchover", {"target": target})

    def submit_build(self, text: bytes, filename: str = "") -> dict:
        ctype = "application/x-yaml" if filename.endswith((".yaml", ".yml")) else "application/json"
        return self.request("POST", "/api/v1/builds", raw=text, content_type=ctype)

    def build(self, build_id: str) -> dict:
        return self.request("GET", f"/api/v1/builds/{build_id}")

    def builds(self) -> list[dict]:
        return self.request("GET", "/api/v1/builds")["builds"]

    def cancel_build(self, build_id: str) -> dict:
        return self.request("POST", f"/api/v1/builds/{urllib.parse.quote(build_id, safe='')}/cancel", {})

    def add_user(self, name: str, role: str, password: str) -> dict:
        return self.request("POST", "/api/v1/users", {"name": name, "role": role, "password": password})

    def users(self) -> list[dict]:
        return self.request("GET", "/api/v1/users")["users"]

    def set_password(self, name: str, password: str) -> dict:
        return self.request("PUT", f"/api/v1/users/{urllib.parse.quote(name, safe='')}/password",
                            {"password": password})

    def delete_user(self, name: str) -> dict:
        return self.request("DELETE", f"/api/v1/users/{urllib.parse.quote(name, safe='')}")
