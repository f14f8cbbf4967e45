// The build monitor of a `baton run` build (web/templates/run_build.html): a
// timeline with one lane per helper core the build used (agent/slot) and the
// initiator's lane for local jobs, one bar per job (remote, local, failed), and
// the failovers and handbacks of the build's span as marks. Polls the JSON API
// every second while the build runs, asking only for the jobs after the last
// one it holds without a gap (?since=N); stops once the build has ended.
(function () {
  "use strict";
  var INTERVAL = 1000;
  var TABLE_ROWS = 25;  // the table lists the newest jobs; the monitor and the API have them all
  var card = document.getElementById("run-build");
  if (!card) return;
  var buildId = card.dataset.runBuild;
  var jobs = {};        // seq -> job
  var contiguous = 0;   // every job 1..contiguous is held
  var finished = false;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function setText(id, text) { var n = document.getElementById(id); if (n) n.textContent = text; }
  function fmtDuration(s) { return s === null || s === undefined ? "" : (s < 60 ? s.toFixed(2) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s"); }
  function laneOf(job) { return job.remote ? job.helper + "/" + job.core : "local"; }
  function onCore(job) {
    return job.remote && typeof job.core_started === "number" && typeof job.core_finished === "number";
  }

  function lanes(host) {
    var names = {};
    Object.keys(jobs).forEach(function (seq) { names[laneOf(jobs[seq])] = true; });
    var remote = Object.keys(names).filter(function (n) { return n !== "local"; }).sort(function (a, b) {
      var pa = a.lastIndexOf("/"), pb = b.lastIndexOf("/");
      var ha = a.slice(0, pa), hb = b.slice(0, pb);
      return ha === hb ? Number(a.slice(pa + 1)) - Number(b.slice(pb + 1)) : (ha < hb ? -1 : 1);
    });
    var out = [{id: "local", label: (host || "initiator") + " (initiator)", initiator: true}];
    remote.forEach(function (n) {
      var p = n.lastIndexOf("/");
      out.push({id: n, label: n.slice(0, p) + " · core " + n.slice(p + 1), initiator: false});
    });
    return out;
  }

  function span(b) {
    var start = b.started, end = b.ended && b.finished ? b.finished : b.now;
    Object.keys(jobs).forEach(function (seq) {
      var j = jobs[seq];
      if (start === null || start === undefined || j.started < start) start = j.started;
      if (j.finished > end) end = j.finished;
    });
    if (start === null || start === undefined) start = b.now;
    return {start: start, end: Math.max(end, start + 1)};
  }

  function place(node, t, s) { node.style.left = (100 * (t - s.start) / (s.end - s.start)) + "%"; }

  function drawMonitor(b) {
    var box = document.getElementById("monitor");
    if (!box) return;
    var s = span(b);
    var all = lanes(b.host);
    var rows = {};
    box.textContent = "";
    if (!Object.keys(jobs).length) box.appendChild(el("div", "monitor-empty small", "No jobs yet."));
    all.forEach(function (lane) {
      var row = el("div", "lane" + (lane.initiator ? " lane-initiator" : ""));
      row.dataset.lane = lane.id;
      var label = el("div", "lane-label", lane.label);
      label.title = lane.label;
      row.appendChild(label);
      var track = el("div", "track");
      row.appendChild(track);
      box.appendChild(row);
      rows[lane.id] = track;
    });
    Object.keys(jobs).forEach(function (seq) {
      var j = jobs[seq];
      var bar = el("div", "job " + (j.exit_code !== 0 ? "job-failed" : j.remote ? "job-remote" : "job-local"));
      bar.dataset.seq = j.seq;
      // On a core's lane a bar is the time the job held that core: with more jobs than cores
      // (make -j4 on two), a job waits for one after it starts, and its whole span would overlap
      // the core's other jobs. Records without these (an older initiator) draw the whole span.
      var held = onCore(j);
      var from = held ? j.core_started : j.started, to = held ? j.core_finished : j.finished;
      place(bar, from, s);
      bar.style.width = (100 * Math.max(to - from, 0) / (s.end - s.start)) + "%";
      bar.title = (j.source || "(no source)") + "\n" + (j.remote ? j.helper + " core " + j.core : "local" + (j.why_local ? ": " + j.why_local : "")) +
        "\n" + fmtDuration(j.duration) + ", exit " + j.exit_code +
        (held ? "\n" + fmtDuration(j.core_finished - j.core_started) + " on the core, " +
          fmtDuration(j.core_started - j.started) + " waiting for it" : "");
      rows[laneOf(j)].appendChild(bar);
    });
    var marks = el("div", "marks");
    (b.events || []).forEach(function (e) {
      if (e.time < s.start || e.time > s.end) return;
      var mark = el("div", "mark mark-" + e.type);
      mark.dataset.event = e.type;
      place(mark, e.time, s);
      mark.title = e.type + " — " + e.coordinator + (e.detail ? ": " + e.detail : "");
      mark.appendChild(el("span", "", e.type + " → " + e.coordinator));
      marks.appendChild(mark);
    });
    box.appendChild(marks);
    box.appendChild(axis(s));
    setText("monitor-span", lanes(b.host).length - 1 + " helper cores · " + fmtDuration(s.end - s.start) +
      (b.ended ? "" : " so far (live)"));
  }

  function axis(s) {
    // Ticks at 1, 2 or 5 × 10^n seconds: about eight over the span.
    var row = el("div", "axis"), length = s.end - s.start, step = 1;
    var raw = length / 8, base = Math.pow(10, Math.floor(Math.log10(raw > 0 ? raw : 1)));
    [1, 2, 5, 10].some(function (m) { step = m * base; return step >= raw; });
    for (var t = 0; t <= length; t += step) {
      var tick = el("div", "tick", fmtDuration(t).replace(".00 s", " s"));
      place(tick, s.start + t, s);
      row.appendChild(tick);
    }
    return row;
  }

  function drawTable() {
    var tbody = document.getElementById("jobs");
    if (!tbody) return;
    var all = Object.keys(jobs).map(Number).sort(function (a, b) { return b - a; });
    var seqs = all.slice(0, TABLE_ROWS);
    setText("jobs-shown", all.length > seqs.length ? "The newest " + seqs.length + " of " + all.length + " jobs." : "");
    tbody.textContent = "";
    if (!seqs.length) {
      var empty = el("tr", "empty");
      var cell = el("td", "", "No jobs yet.");
      cell.colSpan = 7;
      empty.appendChild(cell);
      tbody.appendChild(empty);
      return;
    }
    seqs.forEach(function (seq) {
      var j = jobs[seq], tr = el("tr");
      [j.seq, j.source, j.remote ? j.helper + "/" + j.core : j.helper, j.remote ? "remote" : "local",
       fmtDuration(j.duration), j.exit_code].forEach(function (v) { tr.appendChild(el("td", "", v)); });
      tr.appendChild(el("td", "small", j.why_local || ""));
      tbody.appendChild(tr);
    });
  }

  function render(b) {
    (b.jobs || []).forEach(function (j) { jobs[j.seq] = j; });
    while (jobs[contiguous + 1]) contiguous += 1;
    var st = document.getElementById("build-state");
    if (st) { st.textContent = b.state; st.className = "state state-" + b.state; }
    var c = b.counts || {};
    setText("run-counts", c.total + " jobs: " + c.remote + " remote, " + c.local + " local, " + c.failed + " failed" +
      (b.exit_code !== null && b.exit_code !== undefined ? " · exit " + b.exit_code + ", wall " + b.wall + " s" : ""));
    var reason = document.getElementById("run-reason");
    if (reason) { reason.hidden = !b.reason; reason.textContent = b.reason || ""; }
    drawMonitor(b);
    drawTable();
    card.dataset.jobs = Object.keys(jobs).length;
    if (b.ended) { finished = true; card.dataset.final = "true"; }
  }

  function poll() {
    var url = "/api/v1/builds/" + encodeURIComponent(buildId) + "?since=" + contiguous;
    fetch(url, {credentials: "same-origin", headers: {"X-Baton-Poll": "1", "Accept": "application/json"}})
      .then(function (r) {
        if (r.status === 401) { window.location = "/login?expired=1&next=" + encodeURIComponent(location.pathname); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (b) { if (b) render(b); })
      .catch(function () { /* a missed poll is retried on the next tick */ })
      .then(function () { if (!finished) setTimeout(poll, INTERVAL); });
  }
  poll();   // the first draw, also of a finished build
})();
