/**
 * The admin listener's `/` page: requests, 429s and latency per route, and
 * breaker states, drawn in the browser from `/status` and `/metrics`.
 */

/** The dashboard page. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sluice</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px system-ui, sans-serif; margin: 2rem; color: #1d2430; background: #f7f8fa; }
  h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
  .meta { color: #5b6575; margin-bottom: 1.5rem; }
  table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px #0001; }
  th, td { text-align: left; padding: .5rem .75rem; border-bottom: 1px solid #e6e8ec; }
  th { font-weight: 600; color: #5b6575; font-size: .8rem; text-transform: uppercase; }
  td.num { font-variant-numeric: tabular-nums; text-align: right; }
  .closed { color: #1a7f37; } .half-open { color: #9a6700; } .open { color: #cf222e; font-weight: 600; }
  .error { color: #cf222e; margin: 1rem 0; white-space: pre-wrap; }
  canvas { width: 160px; height: 32px; }
</style>
</head>
<body>
<h1>sluice</h1>
<div class="meta" id="meta">loading...</div>
<div class="error" id="error"></div>
<table>
  <thead><tr><th>route</th><th>pipeline</th><th class="num">req/s</th><th class="num">429/s</th>
  <th class="num">p50 ms, last 2 s</th><th class="num">p99 ms, last 2 s</th><th>req/s, last 2 min</th><th>breaker</th></tr></thead>
  <tbody id="routes"></tbody>
</table>
<script>
const token = () => sessionStorage.getItem("sluice-token") || "";
async function get(path) {
  const headers = token() ? { authorization: "Bearer " + token() } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401) {
    const entered = prompt("Admin token");
    if (entered) { sessionStorage.setItem("sluice-token", entered); return get(path); }
  }
  if (!response.ok) throw new Error(path + ": " + response.status);
  return path === "/metrics" ? response.text() : response.json();
}
function parse(text) {
  const samples = [];
  for (const line of text.split("\\n")) {
    const m = /^(\\w+)(?:\\{([^}]*)\\})? ([^ ]+)/.exec(line);
    if (!m || line.startsWith("#")) continue;
    const labels = {};
    for (const pair of (m[2] || "").matchAll(/(\\w+)="([^"]*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}
function quantile(buckets, q) {
  const total = buckets.at(-1)?.count ?? 0;
  if (!total) return null;
  for (const b of buckets) if (b.count >= q * total) return b.le === Infinity ? null : b.le * 1000;
  return null;
}
// Maps, keyed by route name: a route may be called "constructor" or "at".
let previous = null;
const history = new Map();
async function tick() {
  try {
    const [status, text] = await Promise.all([get("/status"), get("/metrics")]);
    const now = Date.now();
    const samples = parse(text);
    const per = new Map();
    for (const s of samples) {
      const route = s.labels.route;
      if (route === undefined || route === "") continue;
      if (!per.has(route)) per.set(route, { requests: 0, limited: 0, buckets: [] });
      const r = per.get(route);
      if (s.name === "sluice_requests_total") {
        r.requests += s.value;
        if (s.labels.outcome === "limited") r.limited += s.value;
      }
      if (s.name === "sluice_request_duration_seconds_bucket") {
        r.buckets.push({ le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), count: s.value });
      }
    }
    document.getElementById("meta").textContent = "config v" + status.version + " loaded " +
      new Date(status.loaded_at).toLocaleTimeString() + " · store " + status.store.kind + " (" + status.store.state + ")" +
      (status.last_reload_error ? " · last reload failed" : "");
    document.getElementById("error").textContent = status.last_reload_error
      ? status.last_reload_error.errors.map((e) => (e.line ? "line " + e.line + " " : "") + e.path + ": " + e.message).join("\\n")
      : "";
    // Everything put into HTML is escaped, whatever the config's validation allows today.
    const esc = (text) => String(text).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
    const rows = [];
    for (const route of status.routes) {
      const r = per.get(route.name) ?? { requests: 0, limited: 0, buckets: [] };
      const seconds = previous ? (now - previous.at) / 1000 : 0;
      // Counters that went down (the gateway restarted) count afresh from 0.
      const last = previous?.routes.get(route.name);
      const p = last && r.requests < last.requests ? { requests: 0, limited: 0, buckets: [] } : last;
      // Rates and latency are those of the requests since the last tick (the
      // counters and buckets count since the start): "-" before a second tick.
      const latency = p
        ? r.buckets.map((b) => ({ le: b.le, count: b.count - (p.buckets.find((x) => x.le === b.le)?.count ?? 0) }))
        : [];
      const rate = p && seconds ? (r.requests - p.requests) / seconds : 0;
      const limitedRate = p && seconds ? (r.limited - p.limited) / seconds : 0;
      if (!history.has(route.name)) history.set(route.name, []);
      const points = history.get(route.name);
      points.push(rate);
      if (points.length > 60) points.shift();
      const breaker = route.breaker
        ? Object.entries(route.breaker).map(([t, s]) => '<span class="' + esc(s) + '">' + esc(s) + "</span>").join(" ")
        : "";
      const fmt = (v) => v === null ? "-" : v.toFixed(1);
      rows.push("<tr><td>" + esc(route.name) + "</td><td>" + esc(route.pipeline.join(" → ")) + '</td><td class="num">' +
        rate.toFixed(1) + '</td><td class="num">' + limitedRate.toFixed(1) + '</td><td class="num">' +
        fmt(quantile(latency, 0.5)) + '</td><td class="num">' + fmt(quantile(latency, 0.99)) +
        '</td><td><canvas data-route="' + esc(route.name) + '" width="320" height="64"></canvas></td><td>' + breaker + "</td></tr>");
    }
    document.getElementById("routes").innerHTML = rows.join("");
    for (const canvas of document.querySelectorAll("canvas")) {
      const points = history.get(canvas.dataset.route) ?? [];
      const c = canvas.getContext("2d");
      const max = Math.max(1, ...points);
      c.strokeStyle = "#2f6feb"; c.lineWidth = 2; c.beginPath();
      points.forEach((v, i) => c.lineTo(i * (320 / 59), 62 - (v / max) * 58));
      c.stroke();
    }
    previous = { at: now, routes: per };
  } catch (error) {
    document.getElementById("error").textContent = String(error);
  }
}
tick();
setInterval(tick, 2000);
</script>
</body>
</html>
`;
