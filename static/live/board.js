/* Trunkline live call board: one WebSocket (/ws/live/), state in memory, drawn at most 4 times
   a second. The server sends a snapshot (calls asked of every edge) on connect and every 15 s,
   then event batches; this script only keeps and draws what it is told. No library: the call
   list renders only its visible rows (virtualized), so 5,000 calls cost what 30 do. */
(function () {
  "use strict";

  var board = document.getElementById("board");
  var options = window.TRUNKLINE_BOARD || {};
  var ROW = 30; // px per call row (fixed: the list is virtualized)
  var RENDER_EVERY = 250; // ms: at most four renders a second however busy the feed
  var BUCKET = 60000; // ms per chart bar
  var BUCKETS = 15; // 15 x 1 min = the last 15 minutes
  // Ends that are no refusal (edge-policy.md, "how a call ends"); any other reason is a refusal.
  var NOT_REFUSED = {
    normal_clearing: 1, callee_rejected: 1, timeout: 1, cancelled: 1, max_duration: 1,
    ack_timeout: 1, operator_hangup: 1, shutdown: 1, auth_required: 1
  };
  var COLORS = ["#d1495b", "#edae49", "#8e6c8a", "#00798c", "#6a994e", "#bc6c25", "#577590", "#9d0208"];

  var calls = new Map(); // "edge|call_id" -> call
  var trunks = new Map(); // id -> trunk with limits
  var edges = [];
  var starts = []; // ms of recent "started" events: {t, trunk}
  var buckets = new Map(); // bucket number -> {attempts, answers, refusals: {reason: n}}
  var reasonColors = {};
  var ending = new Set();
  var historyLoaded = false;
  var filtered = [];
  var dirty = true;
  var ws = null;
  var retry = 0;

  function $(id) { return document.getElementById(id); }
  function key(edge, id) { return edge + "|" + id; }
  function ms(iso) { return iso ? Date.parse(iso) : null; }

  // --- the feed ---------------------------------------------------------------------------

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + board.dataset.ws);
    status("connecting", "connecting…");
    ws.onopen = function () { retry = 0; status("live", "live"); };
    ws.onmessage = function (message) { receive(JSON.parse(message.data)); };
    ws.onclose = function () {
      // Reconnect by itself, backing off to 10 s; the snapshot on connect resyncs everything.
      var wait = Math.min(10000, 500 * Math.pow(2, retry++));
      status("down", "reconnecting in " + Math.round(wait / 1000) + " s");
      setTimeout(connect, wait);
    };
  }

  function status(state, text) {
    var el = $("t-status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function fromRow(row) {
    return {
      call_id: row.call_id, edge: row.edge, trunk_id: row.trunk_id, customer_id: row.customer_id,
      direction: row.direction, caller: row.caller, callee: row.callee, state: row.state,
      since: ms(row.setup_at) || Date.now(), answered: ms(row.answer_at)
    };
  }

  function receive(msg) {
    if (msg.type === "snapshot") {
      trunks = new Map(msg.trunks.map(function (t) { return [t.id, t]; }));
      edges = msg.edges;
      calls = new Map();
      msg.calls.forEach(function (row) { calls.set(key(row.edge, row.call_id), fromRow(row)); });
      if (!historyLoaded && msg.history) loadHistory(msg.history);
      fillFilters();
    } else if (msg.type === "edge_calls") {
      // That edge restarted or applied a config: its calls are what it lists now, no ghosts.
      calls.forEach(function (call, k) { if (call.edge === msg.edge) calls.delete(k); });
      msg.calls.forEach(function (row) { calls.set(key(row.edge, row.call_id), fromRow(row)); });
      if (msg.edges && msg.edges.length) edges = msg.edges;
    } else if (msg.type === "events") {
      msg.events.forEach(function (e) { apply(msg.node, e); });
    }
    dirty = true;
  }

  function loadHistory(rows) {
    // Once per page: the CDRs of the last 15 minutes; from then on the events count (a later
    // snapshot's history would lag them: CDRs reach the database after the calls end).
    historyLoaded = true;
    rows.forEach(function (row) {
      var b = bucketAt(Date.parse(row.minute));
      b.attempts += row.attempts;
      b.answers += row.answers;
      var unanswered = row.attempts - row.answers;
      if (unanswered > 0 && !NOT_REFUSED[row.reason]) {
        b.refusals[row.reason] = (b.refusals[row.reason] || 0) + unanswered;
      }
    });
  }

  function bucketAt(t) {
    var n = Math.floor(t / BUCKET);
    var b = buckets.get(n);
    if (!b) { b = {attempts: 0, answers: 0, refusals: {}}; buckets.set(n, b); }
    return b;
  }

  function apply(node, e) {
    var k = key(node, e.call_id);
    var t = e.at * 1000;
    var call = calls.get(k);
    if (e.kind === "started") {
      bucketAt(t).attempts++;
      starts.push({t: Date.now(), trunk: e.trunk_id});
      calls.set(k, {
        call_id: e.call_id, edge: node, trunk_id: e.trunk_id, customer_id: e.customer_id,
        direction: e.direction, caller: e.caller, callee: e.callee, state: "setup",
        since: t, answered: null
      });
    } else if (e.kind === "ringing" && call) {
      call.state = "ringing";
    } else if (e.kind === "answered") {
      bucketAt(t).answers++;
      if (call) { call.state = "answered"; call.answered = t; }
    } else if (e.kind === "refused") {
      // An attempt refused before it became a call (its CDR): an attempt and a refusal.
      var b = bucketAt(t);
      b.attempts++;
      b.refusals[e.reason] = (b.refusals[e.reason] || 0) + 1;
    } else if (e.kind === "ended") {
      if (e.reason && !NOT_REFUSED[e.reason] && !(call && call.answered)) {
        var r = bucketAt(t).refusals;
        r[e.reason] = (r[e.reason] || 0) + 1;
      }
      calls.delete(k);
      ending.delete(k);
    }
  }

  // --- filters ----------------------------------------------------------------------------

  function fillFilters() {
    var customerSelect = $("f-customer");
    var trunkSelect = $("f-trunk");
    var keepTrunk = trunkSelect.value;
    if (customerSelect) {
      var keep = customerSelect.value;
      var names = new Map();
      trunks.forEach(function (t) { names.set(String(t.customer_id), t.customer); });
      customerSelect.length = 1;
      Array.from(names).sort(function (a, b) { return a[1].localeCompare(b[1]); })
        .forEach(function (pair) { customerSelect.add(new Option(pair[1], pair[0])); });
      customerSelect.value = keep;
    }
    trunkSelect.length = 1;
    trunks.forEach(function (t) {
      if (!customerSelect || !customerSelect.value || String(t.customer_id) === customerSelect.value) {
        trunkSelect.add(new Option(options.staff ? t.customer + " · " + t.name : t.name, String(t.id)));
      }
    });
    trunkSelect.value = keepTrunk;
  }

  function wanted(call) {
    var customer = $("f-customer") ? $("f-customer").value : "";
    var trunk = $("f-trunk").value;
    var search = $("f-search").value.trim().toLowerCase();
    if (customer && String(call.customer_id) !== customer) return false;
    if (trunk && String(call.trunk_id) !== trunk) return false;
    if (!search) return true;
    var t = trunks.get(call.trunk_id) || {};
    return [call.caller, call.callee, call.call_id, call.edge, t.name, t.customer].some(function (v) {
      return v && String(v).toLowerCase().indexOf(search) !== -1;
    });
  }

  // --- drawing ----------------------------------------------------------------------------

  function render() {
    var now = Date.now();
    while (starts.length && starts[0].t < now - 10000) starts.shift();
    if (dirty) {
      filtered = Array.from(calls.values()).filter(wanted);
      filtered.sort(function (a, b) { return a.since - b.since; });
    }
    $("t-active").textContent = calls.size;
    var answered = 0;
    calls.forEach(function (c) { if (c.state === "answered") answered++; });
    $("t-answered").textContent = answered;
    $("t-cps").textContent = (starts.length / 10).toFixed(1);
    $("shown").textContent = filtered.length === calls.size ? "" : filtered.length + " of " + calls.size + " shown";
    renderGauges(now);
    renderChart(now);
    renderEdges();
    renderRows(now);
    dirty = false;
  }

  function gauge(label, value, limit) {
    var ratio = limit ? Math.min(value / limit, 1) : 0;
    var level = ratio >= 1 ? "full" : ratio >= 0.8 ? "high" : "ok";
    return '<div class="gauge" data-level="' + level + '"><span class="g-label">' + label +
      '</span><span class="g-bar"><span class="g-fill" style="width:' + (ratio * 100).toFixed(1) +
      '%"></span></span><span class="g-value">' + value + " / " + limit + "</span></div>";
  }

  function renderGauges(now) {
    var inUse = new Map();
    calls.forEach(function (c) { inUse.set(c.trunk_id, (inUse.get(c.trunk_id) || 0) + 1); });
    var cps = new Map();
    starts.forEach(function (s) { if (s.t >= now - 1000) cps.set(s.trunk, (cps.get(s.trunk) || 0) + 1); });
    var customer = $("f-customer") ? $("f-customer").value : "";
    var only = $("f-trunk").value;
    var html = [];
    trunks.forEach(function (t) {
      if (customer && String(t.customer_id) !== customer) return;
      if (only && String(t.id) !== only) return;
      html.push('<div class="trunk" data-trunk="' + t.id + '"><div class="t-name">' +
        esc(options.staff ? t.customer + " · " + t.name : t.name) +
        (t.status !== "active" ? ' <em>' + esc(t.status) + "</em>" : "") + "</div>" +
        gauge("channels", inUse.get(t.id) || 0, t.max_channels) +
        gauge("calls/s", cps.get(t.id) || 0, t.max_cps) + "</div>");
    });
    var el = $("gauges");
    var text = html.join("") || '<p class="empty">No trunks.</p>';
    if (el.innerHTML !== text) el.innerHTML = text;
  }

  function renderChart(now) {
    var canvas = $("chart");
    var width = canvas.clientWidth || canvas.width;
    if (canvas.width !== width) canvas.width = width;
    var ctx = canvas.getContext("2d");
    var h = canvas.height, w = canvas.width, pad = 24;
    ctx.clearRect(0, 0, w, h);
    var last = Math.floor(now / BUCKET);
    Array.from(buckets.keys()).forEach(function (n) { if (n <= last - BUCKETS) buckets.delete(n); });
    var rows = [], max = 1, refused = 0;
    for (var n = last - BUCKETS + 1; n <= last; n++) {
      var b = buckets.get(n) || {attempts: 0, answers: 0, refusals: {}};
      var r = 0;
      Object.keys(b.refusals).forEach(function (reason) {
        r += b.refusals[reason];
        if (!reasonColors[reason]) reasonColors[reason] = COLORS[Object.keys(reasonColors).length % COLORS.length];
      });
      refused += r;
      max = Math.max(max, b.attempts, b.answers + r);
      rows.push(b);
    }
    $("t-refused").textContent = refused;
    var bw = (w - pad) / BUCKETS;
    ctx.fillStyle = "#888";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText(String(max), 2, 10);
    ctx.fillText("-15 min", pad, h - 2);
    ctx.fillText("now", w - 22, h - 2);
    var scale = (h - 20) / max;
    rows.forEach(function (b, i) {
      var x = pad + i * bw, y = h - 14;
      var ah = b.answers * scale;
      ctx.fillStyle = "#2a9d8f";
      ctx.fillRect(x + 1, y - ah, bw - 2, ah);
      y -= ah;
      Object.keys(b.refusals).sort().forEach(function (reason) {
        var rh = b.refusals[reason] * scale;
        ctx.fillStyle = reasonColors[reason];
        ctx.fillRect(x + 1, y - rh, bw - 2, rh);
        y -= rh;
      });
    });
    ctx.strokeStyle = "#264653";
    ctx.lineWidth = 2;
    ctx.beginPath();
    rows.forEach(function (b, i) {
      var x = pad + i * bw + bw / 2, y = h - 14 - b.attempts * scale;
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
    var legend = '<span><i style="background:#264653"></i>attempts</span><span><i style="background:#2a9d8f"></i>answers</span>' +
      Object.keys(reasonColors).sort().map(function (reason) {
        return '<span><i style="background:' + reasonColors[reason] + '"></i>' + esc(reason) + "</span>";
      }).join("");
    if ($("legend").innerHTML !== legend) $("legend").innerHTML = legend;
  }

  function renderEdges() {
    var el = $("edges");
    if (!el) return;
    var perEdge = new Map();
    calls.forEach(function (c) { perEdge.set(c.edge, (perEdge.get(c.edge) || 0) + 1); });
    var html = edges.map(function (e) {
      return '<tr data-edge="' + esc(e.name) + '"><td>' + esc(e.name) + "</td><td>" + (e.applied_version == null ? "–" : e.applied_version) +
        "</td><td>" + (e.lag == null ? "–" : e.lag) + '</td><td class="health" data-health="' + esc(e.health) + '">' +
        esc(e.health) + "</td><td>" + (e.health === "unreachable" ? "–" : perEdge.get(e.name) || 0) + "</td></tr>";
    }).join("");
    if (el.innerHTML !== html) el.innerHTML = html;
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return (m >= 60 ? Math.floor(m / 60) + ":" + pad2(m % 60) : m) + ":" + pad2(s);
  }
  function pad2(n) { return n < 10 ? "0" + n : String(n); }
  function esc(v) {
    return String(v == null ? "" : v).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }

  function renderRows(now) {
    var viewport = $("viewport"), spacer = $("spacer");
    spacer.style.height = filtered.length * ROW + "px";
    var first = Math.max(0, Math.floor(viewport.scrollTop / ROW) - 5);
    var count = Math.ceil(viewport.clientHeight / ROW) + 10;
    var html = [];
    for (var i = first; i < Math.min(filtered.length, first + count); i++) {
      var c = filtered[i], k = key(c.edge, c.call_id), t = trunks.get(c.trunk_id) || {};
      var since = c.answered || c.since;
      html.push('<div class="row" role="row" style="top:' + i * ROW + 'px" data-call="' + esc(c.call_id) +
        '" data-state="' + esc(c.state) + '"><span>' + esc(c.caller || "–") + "</span><span>" + esc(c.callee || "–") +
        "</span><span>" + esc(t.name || c.trunk_id) + "</span><span>" + esc(c.direction) + '</span><span class="state">' +
        esc(ending.has(k) ? "ending…" : c.state) + "</span><span>" + duration((now - since) / 1000) + "</span><span>" +
        esc(c.edge) + "</span><span>" + (options.canHangUp ? '<button class="hangup" data-edge="' + esc(c.edge) +
        '" data-id="' + esc(c.call_id) + '"' + (ending.has(k) ? " disabled" : "") + ">Hang up</button>" : "") + "</span></div>");
    }
    var body = html.join("") || (calls.size ? "" : '<p class="empty">No calls in progress.</p>');
    spacer.innerHTML = body;
  }

  // --- hang-up ----------------------------------------------------------------------------

  function csrf() {
    var m = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  $("viewport").addEventListener("click", function (event) {
    var button = event.target.closest("button.hangup");
    if (!button) return;
    var id = button.dataset.id, k = key(button.dataset.edge, id);
    ending.add(k);
    dirty = true;
    fetch(board.dataset.api + encodeURIComponent(id) + "/", {
      method: "DELETE", credentials: "same-origin", headers: {"X-CSRFToken": csrf()}
    }).then(function (response) {
      // 204: the edge ended it; its "ended" event removes the row. 404: it was already over.
      if (response.status === 404) calls.delete(k);
      if (response.status !== 204 && response.status !== 404) {
        ending.delete(k);
        alert("Hang-up failed: HTTP " + response.status);
      }
      dirty = true;
    });
  });

  ["f-customer", "f-trunk", "f-search"].forEach(function (id) {
    var el = $(id);
    if (!el) return;
    el.addEventListener("input", function () {
      if (id === "f-customer") fillFilters();
      dirty = true;
      render();
    });
  });
  $("viewport").addEventListener("scroll", function () { requestAnimationFrame(function () { renderRows(Date.now()); }); });

  setInterval(render, RENDER_EVERY);
  connect();
})();
