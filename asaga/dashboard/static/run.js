// The run page: draw the saga's graph (Mermaid, vendored) with each step's state.
"use strict";
(function () {
  var target = document.getElementById("graph");
  if (!target || !window.mermaid) { return; }
  window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral",
                              flowchart: { htmlLabels: true } });
  window.mermaid.run({ nodes: [target] }).then(function () {
    target.setAttribute("data-rendered", "yes");
  }).catch(function (error) {
    target.setAttribute("data-rendered", "failed");
    var note = document.createElement("p");
    note.className = "error";
    note.textContent = "The graph could not be drawn: " + error;
    target.parentNode.appendChild(note);
  });
})();
