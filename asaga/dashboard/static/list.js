// The runs list: refresh the first page and the counts by polling a cheap JSON endpoint,
// every data-every seconds, for data-for-minutes at most, never while the tab is hidden.
"use strict";
(function () {
  var table = document.getElementById("runs");
  if (!table || !table.dataset.poll) { return; }
  var every = Math.max(1, parseFloat(table.dataset.every || "5")) * 1000;
  var until = Date.now() + parseFloat(table.dataset.forMinutes || "10") * 60000;
  var live = document.getElementById("live");
  var timer = null;

  function say(text) { if (live) { live.textContent = text; } }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function show(data) {
    var body = table.tBodies[0];
    var rows = document.createDocumentFragment();
    data.runs.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.className = "status-" + r.status;
      var first = cell(tr, "");
      var a = document.createElement("a");
      a.className = "run-link";
      a.href = table.dataset.runUrl + "?id=" + encodeURIComponent(r.id);
      a.textContent = r.id;
      first.appendChild(a);
      if (r.key) { var k = document.createElement("div"); k.className = "key"; k.textContent = "key " + r.key; first.appendChild(k); }
      cell(tr, r.saga);
      var st = cell(tr, "");
      var badge = document.createElement("span");
      badge.className = "badge status-" + r.status;
      badge.textContent = r.status;
      st.appendChild(badge);
      cell(tr, r.created);
      cell(tr, r.updated);
      cell(tr, r.failed_step + r.waits);
      rows.appendChild(tr);
    });
    if (!data.runs.length) {
      var none = document.createElement("tr");
      none.className = "empty";
      var td = cell(none, "no runs" + (table.dataset.filtered ? " match these filters" : ""));
      td.colSpan = 6;
      rows.appendChild(none);
    }
    body.replaceChildren(rows);
    Object.keys(data.counts).forEach(function (status) {
      var link = document.querySelector('#counts [data-status="' + status + '"] b');
      if (link) { link.textContent = String(data.counts[status]); }
    });
    say("live: updated " + data.at + " UTC");
  }

  function stop(why) {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    say(why);
  }

  function tick() {
    timer = null;
    if (document.hidden) { stop("paused while the tab is hidden (reload to resume)"); return; }
    if (Date.now() > until) { stop("live updates stopped (reload to resume)"); return; }
    fetch(table.dataset.poll, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) { show(data); timer = setTimeout(tick, every); })
      .catch(function (e) { stop("live updates stopped: " + e); });
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { stop("paused while the tab is hidden (reload to resume)"); }
  });
  timer = setTimeout(tick, every);
})();
