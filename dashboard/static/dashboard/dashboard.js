"use strict";
// Forms with data-confirm ask first (no inline handlers: the Content-Security-Policy forbids them).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset ? event.target.dataset.confirm : undefined;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});
