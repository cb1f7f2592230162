// Progressive enhancement: the page is complete without this script. With it, the storefront
// listens for the server's updates (Server-Sent Events) and swaps the live block in place.
(function () {
  "use strict";
  var root = document.getElementById("storefront");
  if (!root || !window.EventSource) return;
  var html = document.documentElement;
  var base = root.getAttribute("data-live-url");
  // EventSource reconnects by itself after a dropped connection, but gives up for good on an
  // answer that is not a stream (503 past the server's stream budget, an instance going away).
  // Those are retried here, later each time and with jitter so that refused pages do not all
  // come back at once; the server asks for at least a second (Retry-After: 1).
  var FIRST_DELAY = 1000;
  var MAX_DELAY = 30000;
  var delay = FIRST_DELAY;

  function bump(name) {
    html.setAttribute(name, String(Number(html.getAttribute(name) || 0) + 1));
  }

  function connect() {
    var live = document.getElementById("live");
    var since = live ? live.getAttribute("data-version") : "";
    var source = new EventSource(base + "?since=" + encodeURIComponent(since));
    source.addEventListener("open", function () {
      delay = FIRST_DELAY;
      html.setAttribute("data-live-state", "open");
    });
    source.addEventListener("live", function (event) {
      var holder = document.createElement("div");
      holder.innerHTML = event.data;
      var fresh = holder.firstElementChild;
      var current = document.getElementById("live");
      if (!fresh || !current) return;
      fresh.classList.add("updated");
      current.replaceWith(fresh);
      bump("data-live-updates");
    });
    source.addEventListener("error", function () {
      if (source.readyState !== EventSource.CLOSED) return;
      source.close();
      html.setAttribute("data-live-state", "retrying");
      bump("data-live-retries");
      var wait = delay / 2 + Math.random() * delay / 2;
      delay = Math.min(delay * 2, MAX_DELAY);
      setTimeout(connect, Math.max(wait, FIRST_DELAY));
    });
  }

  connect();
})();
