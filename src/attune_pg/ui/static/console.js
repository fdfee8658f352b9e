// attune_pg console: live updates through server-sent events, no polling.
// A page marks the regions that can change with data-src (the URL of that region alone);
// when the server reports a change the page cares about, each region is refetched once
// (changes are coalesced) and swapped in place.
(function () {
  "use strict";
  var mode = document.body.getAttribute("data-live") || "";
  if (!mode || !window.EventSource) { return; }
  var executionId = mode.indexOf("execution:") === 0 ? mode.slice(10) : null;
  var state = document.getElementById("live-state");
  var pending = false;
  var running = false;

  function refresh() {
    if (running) { pending = true; return; }
    running = true;
    var regions = document.querySelectorAll("[data-src]");
    var left = regions.length;
    if (!left) { running = false; return; }
    regions.forEach(function (region) {
      // Keep open <details> open across the swap.
      var open = [];
      region.querySelectorAll("details[open]").forEach(function (d, i) { open.push(i); });
      fetch(region.getAttribute("data-src"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null) {
            region.innerHTML = html;
            var all = region.querySelectorAll("details");
            open.forEach(function (i) { if (all[i]) { all[i].open = true; } });
            region.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () {})
        .then(function () {
          left -= 1;
          if (left === 0) {
            running = false;
            if (pending) { pending = false; refresh(); }
          }
        });
    });
  }

  function concerns(changes) {
    if (!executionId) { return true; }
    return changes.some(function (c) {
      var channel = c[0], payload = c[1];
      if (channel === "resync" || channel === "attune_work" || channel === "attune_control") {
        return true;
      }
      return payload.split(":")[0] === executionId;
    });
  }

  var source = new EventSource("/live");
  source.addEventListener("open", function () { if (state) { state.className = "live-state on"; } });
  source.addEventListener("error", function () { if (state) { state.className = "live-state off"; } });
  source.addEventListener("change", function (event) {
    var changes = [];
    try { changes = JSON.parse(event.data); } catch (e) { return; }
    if (concerns(changes)) { refresh(); }
  });
})();
