// Progressive refresh: every 10 s, fetch this page again and swap <main> (paused while a
// form field has focus). Without JavaScript the page simply stays as loaded.
"use strict";
(function () {
  const main = document.querySelector("main[data-refresh]");
  if (!main) { return; }
  setInterval(function () {
    if (document.hidden || main.contains(document.activeElement)) { return; }
    fetch(location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        if (fresh) { main.innerHTML = fresh.innerHTML; }
      })
      .catch(function () { /* the next turn tries again */ });
  }, 10000);
})();
