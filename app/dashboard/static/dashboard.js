// Charts of the dashboard: each <div class="chart"> names a table (data-source) whose rows carry
// the values as data-* attributes, the x column (data-x) and the series ("key:label,...").
// The table is the source of truth (tests compare it with the API); uPlot only draws it.
"use strict";
(function () {
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];
  window.tcCharts = window.tcCharts || {};

  function attr(row, key) {
    var value = row.getAttribute("data-" + key);
    if (value === null || value === "") return null;
    var n = Number(value);
    return Number.isFinite(n) ? n : null;
  }

  function draw(el) {
    var source = document.querySelector(el.getAttribute("data-source"));
    if (!source || typeof uPlot === "undefined") return;
    var xKey = el.getAttribute("data-x");
    var rows = Array.prototype.filter.call(source.querySelectorAll("tr"), function (r) {
      return r.hasAttribute("data-" + xKey);
    });
    var specs = el.getAttribute("data-series").split(",").map(function (s) {
      var parts = s.split(":");
      return { key: parts[0], label: parts.slice(1).join(":") || parts[0] };
    });
    var data = [rows.map(function (r) { return attr(r, xKey); })];
    specs.forEach(function (s) { data.push(rows.map(function (r) { return attr(r, s.key); })); });
    var series = [{ label: xKey }];
    specs.forEach(function (s, i) {
      series.push({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 6 } });
    });
    // data-band="mean:std": shade mean ± std (two derived series after the table's own, so
    // data[1..] stay the table's columns)
    var bands;
    var band = el.getAttribute("data-band");
    if (band) {
      var keys = band.split(":");
      var mean = data[1 + specs.findIndex(function (s) { return s.key === keys[0]; })];
      var std = data[1 + specs.findIndex(function (s) { return s.key === keys[1]; })];
      if (mean && std) {
        var edge = function (sign) {
          return mean.map(function (m, i) { return m === null || std[i] === null ? null : m + sign * std[i]; });
        };
        data.push(edge(1), edge(-1));
        var faint = { stroke: "rgba(37, 99, 235, 0.35)", width: 1, dash: [4, 4], points: { show: false } };
        series.push(Object.assign({ label: "mean + std" }, faint), Object.assign({ label: "mean − std" }, faint));
        bands = [{ series: [data.length - 2, data.length - 1], fill: "rgba(37, 99, 235, 0.10)" }];
      }
    }
    var old = window.tcCharts[el.id];
    if (old) old.destroy();
    el.textContent = "";
    var time = el.getAttribute("data-time") === "1";
    var opts = {
      title: el.getAttribute("data-title") || "",
      // the content box: the chart must not overflow its card's padding
      width: Math.max(300, Math.min((el.clientWidth || 576) - 16, 900)),
      height: 220,
      scales: { x: { time: time } },
      series: series,
      bands: bands,
      // steps and group positions are whole numbers: no 1.5 ticks
      axes: [time ? {} : { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, { size: 60 }],
    };
    if (!rows.length) {
      el.classList.add("empty");
      el.setAttribute("data-points", "0");
      el.textContent = (opts.title ? opts.title + ": " : "") + "no data yet";
      delete window.tcCharts[el.id];
      return;
    }
    el.classList.remove("empty");
    el.setAttribute("data-points", String(rows.length));
    window.tcCharts[el.id] = new uPlot(opts, data, el);
  }

  function drawAll(root) {
    (root || document).querySelectorAll("div.chart").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSettle", function (evt) {
    var target = evt.detail && evt.detail.elt;
    drawAll(target && target.isConnected ? target : document);
  });
})();
