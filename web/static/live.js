// Keeps pages current without a reload: polls the JSON API every second and
// redraws the live parts. Polls send X-Baton-Poll so they do not count as
// user activity (an idle session still expires).
(function () {
  "use strict";
  var INTERVAL = 1000;
  var body = document.body;
  var page = body.dataset.page;
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") node.className = attrs[k];
      else if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }
  function td(content) { return el("td", {}, [content === null || content === undefined ? "" : String(content)]); }
  function replaceRows(tbody, rows, emptyText, columns) {
    if (!tbody) return;
    tbody.textContent = "";
    if (!rows.length) {
      tbody.appendChild(el("tr", {className: "empty"}, [el("td", {colspan: columns, text: emptyText})]));
      return;
    }
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  function fmtTime(t) {
    if (!t) return "—";
    var d = new Date(t * 1000), p = function (n) { return (n < 10 ? "0" : "") + n; };
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function fmtDuration(s) {
    if (s === null || s === undefined) return "";
    if (s < 60) return s.toFixed(1) + " s";
    var m = Math.floor(s / 60);
    return m < 60 ? m + " min " + Math.floor(s % 60) + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function setText(id, text) { var n = document.getElementById(id); if (n) n.textContent = text; }

  function updateBanner(b) {
    var box = document.getElementById("banner");
    if (!box) return;
    box.hidden = !b;
    if (!b) return;
    setText("banner-text", b.text);
    var link = document.getElementById("banner-link");
    link.hidden = !b.link;
    if (b.link) { link.href = b.link; link.textContent = b.link_text; }
  }
  function updateWritable(readOnly, acceptsBuilds) {
    // Controls follow the server's view (the server refuses anyway). Forms of class
    // "work" (builds, cancelling) follow accepts_builds: the coordinator serving agents
    // takes them whatever its role; every other form follows read_only.
    var admin = body.dataset.admin === "true";
    var writable = !readOnly && admin;
    var serving = !!acceptsBuilds && admin;
    if ((body.dataset.writable === "true") === writable && (body.dataset.serving === "true") === serving) return;
    body.dataset.writable = writable ? "true" : "false";
    body.dataset.serving = serving ? "true" : "false";
    document.querySelectorAll("main form button, main form fieldset, main form textarea, main form input[type=file]").forEach(function (c) {
      var work = c.closest("form.work");
      c.disabled = work ? !serving || c.dataset.cancelling === "true" : !writable;
    });
  }
  function cancelForm(buildId, cancelling) {
    var serving = body.dataset.serving === "true";
    return el("form", {className: "work", method: "post", action: "/builds/" + encodeURIComponent(buildId) + "/cancel"}, [
      el("input", {type: "hidden", name: "csrf_token", value: csrf}),
      el("input", {type: "hidden", name: "back", value: "list"}),
      el("button", {type: "submit", disabled: !serving || cancelling, "data-cancelling": cancelling ? "true" : null,
                    text: cancelling ? "Cancelling…" : "Cancel"})]);
  }

  function stateSpan(state, label) { return el("span", {className: "state state-" + state, text: label || state}); }

  var renderers = {
    overview: function (s) {
      setText("leader-name", s.leader ? s.leader.name : "nobody");
      setText("epoch", s.epoch || "—");
      setText("lease", s.lease_ttl_left === null ? "—" : Math.round(s.lease_ttl_left) + " s");
      setText("selected", s.selected_backup || "none");
      setText("build-counts", s.builds.running + " / " + s.builds.queued);
      var ag = s.agent_summary;
      setText("agent-counts", ag.busy + " / " + ag.idle + " / " + ag.offline);
      replaceRows(document.getElementById("coordinators"), s.coordinators.map(function (c) {
        return el("tr", {}, [td(c.name), el("td", {}, [el("span", {className: "tag tag-" + c.role, text: c.role})]),
          el("td", {}, [el("span", {className: "dot " + (c.alive ? "ok" : "down")}), c.alive ? "alive" : "down"]),
          td(c.leader ? "★ leader" : ""), td(c.selected ? "yes" : ""), td(c.web || "")]);
      }), "No coordinators.", 6);
      replaceRows(document.getElementById("events"), s.events.map(function (e) {
        return el("tr", {}, [td(fmtTime(e.time)), el("td", {}, [el("span", {className: "tag tag-ev-" + e.type, text: e.type})]),
          td(e.coordinator), td(e.epoch || ""), td(e.detail)]);
      }), "No events yet.", 5);
    },
    agents: function (s) {
      var admin = body.dataset.admin === "true";
      setText("agent-count", s.agents.length);
      replaceRows(document.getElementById("agents"), s.agents.map(function (a) {
        var cells = [td(a.name), el("td", {}, [stateSpan(a.state, a.label)]), td(a.cores), td(a.host || ""), td(a.group || ""),
          td(a.builds.join(", ")), td(a.coordinator || "")];
        if (admin) {
          var ro = s.read_only;
          var form = el("form", {method: "post", action: "/agents/" + encodeURIComponent(a.name)}, [
            el("input", {type: "hidden", name: "csrf_token", value: csrf}),
            el("button", {name: "action", value: a.disabled ? "enable" : "disable", disabled: ro, text: a.disabled ? "Enable" : "Disable"}),
            s.settings.auto_subscribe ? document.createTextNode("") :
              el("button", {name: "action", value: a.admin_subscribed ? "unsubscribe" : "subscribe", disabled: ro, text: a.admin_subscribed ? "Unsubscribe" : "Subscribe"})]);
          cells.push(el("td", {className: "actions"}, [form]));
        }
        return el("tr", {"data-name": a.name}, cells);
      }), "No agents have registered yet.", 8);
    },
    builds: function (data) {
      var admin = body.dataset.admin === "true";
      replaceRows(document.getElementById("builds"), data.builds.map(function (b) {
        var bar = el("div", {className: "bar"}, [el("div", {className: "fill", style: "width: " + b.done_pct + "%"})]);
        if (b.failed) bar.appendChild(el("div", {className: "fail", style: "width: " + b.failed_pct + "%"}));
        var run = b.kind === "run";   // a `baton run` build: its jobs, no cancelling here
        var progress = run ? [el("span", {className: "small", text: b.total + " jobs" + (b.failed ? ", " + b.failed + " failed" : "")})]
          : [bar, el("span", {className: "small", text: (b.done + b.failed) + "/" + b.total + (b.failed ? ", " + b.failed + " failed" : "")})];
        var cells = [el("td", {}, [el("a", {href: "/builds/" + encodeURIComponent(b.id), text: b.id})]),
          el("td", {}, run ? [b.name || "", " ", el("span", {className: "tag", text: "run"})] : [b.name || ""]),
          el("td", {}, [stateSpan(b.state)]), el("td", {}, progress),
          td(fmtTime(b.submitted)), td(b.user || b.host || "")];
        if (admin) cells.push(el("td", {className: "actions"}, b.ended || run ? [] : [cancelForm(b.id, b.cancelling)]));
        return el("tr", {}, cells);
      }), "No builds yet.", admin ? 7 : 6);
    },
    build: function (b) {
      var st = document.getElementById("build-state");
      if (st) { st.textContent = b.state; st.className = "state state-" + b.state; }
      setText("build-counts", b.counts.done + " done, " + b.counts.failed + " failed, " + b.counts.running + " running, " + b.counts.queued + " queued of " + b.total);
      ["running", "failed", "queued", "done"].forEach(function (k) { setText("count-" + k, b.counts[k]); });
      replaceRows(document.getElementById("tasks"), b.tasks.map(function (t) {
        var out = (t.error || "") + (t.output_tail || "");
        return el("tr", {}, [el("td", {title: t.cmd, text: t.id}), el("td", {}, [stateSpan(t.state)]), td(t.agent || ""),
          td(t.attempt || ""), td(t.exit_code === null || t.exit_code === undefined ? "" : t.exit_code), td(fmtDuration(t.duration)),
          el("td", {}, out ? [el("pre", {className: "tail", text: out})] : [])]);
      }), "No tasks to show.", 7);
      var more = document.getElementById("tasks-more");
      if (more) more.hidden = b.matching <= b.tasks.length;
      var cancel = document.getElementById("cancel-build");
      if (cancel && b.ended) cancel.hidden = true;
      else if (cancel && b.cancel) {
        var button = cancel.querySelector("button");
        button.disabled = true; button.dataset.cancelling = "true"; button.textContent = "Cancelling…";
      }
      if (b.ended) finished = true;
    }
  };

  var buildCard = document.querySelector("[data-build]");
  var finished = false;  // a finished build does not change any more: stop polling
  var buildQuery = "";
  if (buildCard) {
    var params = [];
    if (buildCard.dataset.state) params.push("state=" + encodeURIComponent(buildCard.dataset.state));
    if (buildCard.dataset.limit) params.push("limit=" + encodeURIComponent(buildCard.dataset.limit));
    buildQuery = params.length ? "?" + params.join("&") : "";
    finished = buildCard.dataset.final === "true";
  }
  var sources = {
    overview: "/api/v1/status?agents=none", agents: "/api/v1/status",
    settings: "/api/v1/status?agents=none", users: "/api/v1/status?agents=none",
    run: "/api/v1/status?agents=none",   // the banner; the build monitor polls its build (monitor.js)
    builds: buildCard ? "/api/v1/builds/" + encodeURIComponent(buildCard.dataset.build) + buildQuery : "/api/v1/builds"
  };
  var url = sources[page];
  if (!url) return;
  var render = page === "builds" && buildCard ? renderers.build : renderers[page];

  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"X-Baton-Poll": "1", "Accept": "application/json"}})
      .then(function (r) {
        if (r.status === 401) { window.location = "/login?expired=1&next=" + encodeURIComponent(location.pathname); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (data) {
        if (!data) return;
        if ("banner" in data) { updateBanner(data.banner); updateWritable(data.read_only, data.accepts_builds); }
        if (render) render(data);
      })
      .catch(function () { /* a missed poll is retried on the next tick */ })
      .then(function () { if (!finished) setTimeout(poll, INTERVAL); });
  }
  if (!finished) setTimeout(poll, INTERVAL);
})();
