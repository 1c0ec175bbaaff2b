"""The live preview's single HTML page: inline CSS and JS, nothing fetched from elsewhere (robots are offline)."""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge-sdk live preview</title>
<style>
  :root { --bg: #14181d; --panel: #1e242b; --text: #e6e9ed; --muted: #8a94a0; --ok: #2ea043;
          --warn: #d29922; --bad: #da3633; }
  * { box-sizing: border-box; }
  body { margin: 0; background: var(--bg); color: var(--text);
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  header { display: flex; align-items: center; gap: 12px; padding: 8px 16px; background: var(--panel); }
  header h1 { font-size: 16px; margin: 0; font-weight: 600; }
  #badge { padding: 2px 10px; border-radius: 10px; font-weight: 600; background: var(--muted); color: #000; }
  #badge.ok { background: var(--ok); } #badge.reconnecting, #badge.stale { background: var(--warn); }
  #badge.ended, #badge.offline { background: var(--bad); color: #fff; }
  main { display: flex; gap: 16px; padding: 16px; align-items: flex-start; }
  #video { flex: 1 1 auto; min-width: 0; background: #000; border-radius: 6px; overflow: hidden;
           display: flex; justify-content: center; }
  #stream { display: block; max-width: 100%; height: auto; }
  aside { flex: 0 0 260px; background: var(--panel); border-radius: 6px; padding: 12px; }
  table { width: 100%; border-collapse: collapse; }
  th { text-align: left; color: var(--muted); font-weight: 400; padding: 3px 0; }
  td { text-align: right; font-variant-numeric: tabular-nums; padding: 3px 0; }
  h2 { font-size: 13px; color: var(--muted); margin: 14px 0 4px; text-transform: uppercase; }
  #message { color: var(--warn); min-height: 1.4em; margin-top: 8px; }
</style>
</head>
<body>
<header><h1>edge-sdk live preview</h1><span id="badge">connecting</span><span id="source"></span></header>
<main>
  <div id="video"><img id="stream" alt="annotated camera stream"></div>
  <aside>
    <h2>Running</h2>
    <table>
      <tr><th>Bundle</th><td id="bundle">&ndash;</td></tr>
      <tr><th>Precision</th><td id="precision">&ndash;</td></tr>
      <tr><th>Device</th><td id="device">&ndash;</td></tr>
      <tr><th>Serial link</th><td id="serial">&ndash;</td></tr>
      <tr><th>MQTT</th><td id="mqtt">&ndash;</td></tr>
      <tr><th>Uptime</th><td id="uptime">&ndash;</td></tr>
    </table>
    <h2>Vision</h2>
    <table>
      <tr><th>FPS</th><td id="fps">&ndash;</td></tr>
      <tr><th>Latency p50</th><td id="p50">&ndash;</td></tr>
      <tr><th>Latency p99</th><td id="p99">&ndash;</td></tr>
      <tr><th>Frames</th><td id="frames">&ndash;</td></tr>
      <tr><th>Dropped frames</th><td id="dropped">&ndash;</td></tr>
      <tr><th>Detections</th><td id="detections">&ndash;</td></tr>
      <tr><th>Source state</th><td id="state">&ndash;</td></tr>
      <tr><th>GPU load</th><td id="gpu">&ndash;</td></tr>
    </table>
    <h2>Detections by class</h2>
    <table id="classes"></table>
    <h2>Temperatures</h2>
    <table id="temperatures"><tr><th>not available</th></tr></table>
    <div id="message"></div>
  </aside>
</main>
<script>
"use strict";
function fixed(value, digits, unit) {
  return (typeof value === "number" && isFinite(value)) ? value.toFixed(digits) + (unit || "") : "\\u2013";
}
function setText(id, text) { document.getElementById(id).textContent = text; }
function fillTable(id, entries, digits, unit, empty) {
  const table = document.getElementById(id);
  table.textContent = "";
  if (entries.length === 0) {
    const row = table.insertRow(); const th = document.createElement("th");
    th.textContent = empty; row.appendChild(th); return;
  }
  for (const [name, value] of entries) {
    const row = table.insertRow(); const th = document.createElement("th");
    th.textContent = name; row.appendChild(th);
    row.insertCell().textContent = typeof value === "number" ? fixed(value, digits, unit) : String(value);
  }
}
function duration(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) { return "\u2013"; }
  const total = Math.floor(seconds), h = Math.floor(total / 3600), m = Math.floor(total % 3600 / 60);
  return (h ? h + " h " : "") + (h || m ? m + " min " : "") + (total % 60) + " s";
}
function renderRun(run) {
  const links = run.links || {};
  setText("bundle", run.bundle ? run.bundle + " " + run.version : "\u2013");
  setText("precision", run.precision || "\u2013");
  setText("device", run.plan || run.device || "\u2013");
  setText("serial", links.serial || "not used");
  setText("mqtt", links.mqtt || "not used");
}
function render(s) {
  if (s.run) { renderRun(s.run); }
  setText("uptime", duration(s.uptime_s));
  setText("fps", fixed(s.fps, 1));
  setText("p50", fixed(s.latency_ms_p50, 1, " ms"));
  setText("p99", fixed(s.latency_ms_p99, 1, " ms"));
  setText("frames", s.frames == null ? "\\u2013" : String(s.frames));
  setText("dropped", s.dropped_frames == null ? "\\u2013" : String(s.dropped_frames));
  setText("detections", s.detections == null ? "\\u2013" : String(s.detections));
  setText("state", s.source_state || "\\u2013");
  setText("gpu", fixed(s.gpu_load, 0, " %"));
  setText("source", s.source_id || "");
  const badge = document.getElementById("badge");
  badge.textContent = s.source_state || "waiting";
  badge.className = s.source_state || "";
  fillTable("classes", Object.entries(s.detections_by_class || {}), 0, "", "none");
  fillTable("temperatures", Object.entries(s.temperatures || {}), 1, " \\u00b0C", "not available");
  const degraded = s.status && ["reconnecting", "stale", "ended"].indexOf(s.status.state) >= 0;
  setText("message", degraded ? s.status.state + ": " + s.status.message : "");
}
function poll() {
  fetch("/stats.json", {cache: "no-store"})
    .then(function (r) { return r.json(); })
    .then(render)
    .catch(function () {
      const badge = document.getElementById("badge");
      badge.textContent = "offline"; badge.className = "offline";
    })
    .finally(function () { setTimeout(poll, 500); });
}
function startStream() {
  const img = document.getElementById("stream");
  img.onerror = function () { setTimeout(function () { img.src = "/stream.mjpg?t=" + Date.now(); }, 2000); };
  img.src = "/stream.mjpg";
}
// The stream never finishes loading: start it after the page's load event, not as part of it.
window.addEventListener("load", function () { poll(); startStream(); });
</script>
</body>
</html>
"""
