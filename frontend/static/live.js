// Progressive enhancement: the page is complete without this script. With it, the storefront
// listens for the server's updates (Server-Sent Events) and swaps the live block in place.
(function () {
  "use strict";
  var root = document.getElementById("storefront");
  if (!root || !window.EventSource) return;
  var live = document.getElementById("live");
  var url = root.getAttribute("data-live-url") + "?since=" + encodeURIComponent(live ? live.getAttribute("data-version") : "");
  var source = new EventSource(url);
  source.addEventListener("live", function (event) {
    var holder = document.createElement("div");
    holder.innerHTML = event.data;
    var fresh = holder.firstElementChild;
    var current = document.getElementById("live");
    if (!fresh || !current) return;
    fresh.classList.add("updated");
    current.replaceWith(fresh);
    document.documentElement.setAttribute("data-live-updates", String(Number(document.documentElement.getAttribute("data-live-updates") || 0) + 1));
  });
})();
