// attune_pg console: live updates through server-sent events, no polling.
// A page marks what can change with data-src (the URL of that part alone). When the server
// reports a change the page cares about, each part is refetched once (changes arriving
// meanwhile are coalesced) and swapped in place. A part answers HTML, or JSON naming
// sub-regions ({name: {html, digest}}, for [data-region=name] inside it). A region whose
// digest did not change is left alone, and one holding a form that has focus or was edited
// is never swapped: that would lose what someone is typing.
(function () {
  "use strict";
  var mode = document.body.getAttribute("data-live") || "";
  if (!mode || !window.EventSource) { return; }
  var executionId = mode.indexOf("execution:") === 0 ? mode.slice(10) : null;
  var state = document.getElementById("live-state");
  var pending = false;   // a change arrived while refreshing: refresh again afterwards
  var deferred = false;  // a region was skipped as busy: refresh when focus moves on
  var running = false;

  function busy(region) {
    var active = document.activeElement;
    if (active && active !== document.body && region.contains(active)) { return true; }
    return region.getAttribute("data-dirty") === "1";
  }

  function swap(region, html, digest) {
    if (digest && digest === region.getAttribute("data-digest")) { return; }
    if (busy(region)) { deferred = true; return; }
    var open = [];  // keep open <details> open across the swap
    region.querySelectorAll("details").forEach(function (d, i) { if (d.open) { open.push(i); } });
    region.innerHTML = html;
    region.setAttribute("data-digest", digest || "");
    var all = region.querySelectorAll("details");
    open.forEach(function (i) { if (all[i]) { all[i].open = true; } });
  }

  function apply(part, response) {
    var type = response.headers.get("Content-Type") || "";
    if (type.indexOf("application/json") === 0) {
      return response.json().then(function (regions) {
        Object.keys(regions).forEach(function (name) {
          var region = part.querySelector('[data-region="' + name + '"]');
          if (region) { swap(region, regions[name].html, regions[name].digest); }
        });
      });
    }
    var digest = response.headers.get("X-Digest");
    return response.text().then(function (html) { swap(part, html, digest); });
  }

  function refresh() {
    if (running) { pending = true; return; }
    var parts = document.querySelectorAll("[data-src]");
    var left = parts.length;
    if (!left) { return; }
    running = true;
    parts.forEach(function (part) {
      fetch(part.getAttribute("data-src"), { credentials: "same-origin" })
        .then(function (response) { return response.ok ? apply(part, response) : null; })
        .catch(function () {})
        .then(function () {
          part.setAttribute("data-refreshed", String(Date.now()));
          left -= 1;
          if (left === 0) {
            running = false;
            if (pending) { pending = false; refresh(); }
          }
        });
    });
  }

  document.addEventListener("input", function (event) {
    var region = event.target.closest && event.target.closest("[data-region], [data-src]");
    if (region) { region.setAttribute("data-dirty", "1"); }
  });
  document.addEventListener("focusout", function () {
    setTimeout(function () { if (deferred) { deferred = false; refresh(); } }, 0);
  });

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
  source.addEventListener("open", function () {
    if (state) { state.className = "live-state on"; }
    // What changed between rendering the page and subscribing (or while reconnecting) sent
    // no event to this page: catch up once.
    refresh();
  });
  source.addEventListener("error", function () { if (state) { state.className = "live-state off"; } });
  source.addEventListener("change", function (event) {
    var changes = [];
    try { changes = JSON.parse(event.data); } catch (e) { return; }
    if (concerns(changes)) { refresh(); }
  });
})();
