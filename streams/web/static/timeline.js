// Hands the server-built figure (streams/web/charts.py) to plotly.js; no chart code here.
document.addEventListener("DOMContentLoaded", function () {
  var target = document.getElementById("timeline-chart");
  var source = document.getElementById("timeline-figure");
  if (!target || !source || typeof Plotly === "undefined") {
    return;
  }
  var figure = JSON.parse(source.textContent);
  Plotly.newPlot(target, figure.data, figure.layout, {
    responsive: true,
    displaylogo: false,
    modeBarButtonsToRemove: ["toImage", "sendDataToCloud"],
  }).then(function () {
    target.setAttribute("data-rendered", "true");
  });
});
