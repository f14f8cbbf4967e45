"""The rows of the Agents table, rendered in Python.

A farm has 1,000 agents; through Jinja the table cost ~60 ms per page view
(31 template expressions per row), in plain f-strings with markupsafe
escaping it costs a few. The markup matches what static/live.js draws when
it refreshes the table.
"""
from __future__ import annotations

from markupsafe import Markup, escape


def agent_rows_html(rows: list[dict], *, admin: bool, writable: bool, auto_subscribe: bool,
                    csrf_token: str, base_url: str) -> Markup:
    if not rows:
        return Markup('<tr class="empty"><td colspan="8">No agents have registered yet.</td></tr>')
    off = "" if writable else " disabled"
    token = escape(csrf_token)
    parts = []
    for a in rows:
        name = escape(a["name"])
        cells = (f'<tr data-name="{name}"><td>{name}</td>'
                 f'<td><span class="state state-{escape(a["state"])}">{escape(a["label"])}</span></td>'
                 f'<td>{int(a["cores"])}</td><td>{escape(a["host"] or "")}</td><td>{escape(a["group"] or "")}</td>'
                 f'<td>{escape(", ".join(a["builds"]))}</td><td>{escape(a["coordinator"] or "")}</td>')
        if admin:
            action = "enable" if a["disabled"] else "disable"
            buttons = f'<button name="action" value="{action}"{off}>{action.capitalize()}</button>'
            if not auto_subscribe:
                sub = "unsubscribe" if a["admin_subscribed"] else "subscribe"
                buttons += f'<button name="action" value="{sub}"{off}>{sub.capitalize()}</button>'
            cells += (f'<td class="actions"><form method="post" action="{escape(base_url)}/{name}">'
                      f'<input type="hidden" name="csrf_token" value="{token}">{buttons}</form></td>')
        parts.append(cells + "</tr>")
    return Markup("\n".join(parts))
