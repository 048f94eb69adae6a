/** `deno task demo` as a newcomer runs it: the printed curl lines work. */
import assert from "node:assert/strict";
import { freePort, repoPath, waitFor } from "../_helpers.ts";

Deno.test("the demo starts both servers and shows a 200, a 429 with Retry-After, and metrics", async () => {
  const port = freePort();
  const adminPort = freePort();
  const upstreamPort = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--config",
      repoPath("deno.json"),
      "--allow-net",
      "--allow-read=.",
      "--allow-env",
      "demo/demo.ts",
    ],
    cwd: repoPath(""),
    env: {
      PORT: String(port),
      ADMIN_PORT: String(adminPort),
      DEMO_UPSTREAM_PORT: String(upstreamPort),
      NO_COLOR: "1",
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let printed = "";
  try {
    const started = await waitFor(async () => {
      const { value } = await output.read();
      printed += value ?? "";
      return printed.includes("Ctrl-C stops both.");
    }, 20_000);
    assert.ok(started, `the demo did not print its lines:\n${printed}`);
    const base = `http://127.0.0.1:${port}`;
    assert.ok(printed.includes(`curl -i ${base}/hello`));

    const first = await fetch(`${base}/hello`);
    assert.equal(first.status, 200);
    assert.equal(first.headers.get("ratelimit-policy"), `"free";q=5;w=60`);
    assert.equal((await first.json()).upstream, "demo");
    const statuses = [];
    for (let i = 0; i < 5; i++) {
      const response = await fetch(`${base}/hello`);
      statuses.push(response.status);
      await response.body?.cancel();
    }
    assert.deepEqual(statuses, [200, 200, 200, 200, 429]);
    const limited = await fetch(`${base}/hello`);
    assert.equal(limited.status, 429);
    assert.equal(limited.headers.get("content-type"), "application/problem+json");
    assert.ok(Number(limited.headers.get("retry-after")) >= 1);
    await limited.body?.cancel();
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    assert.match(metrics, /sluice_requests_total\{route="demo",outcome="limited"\} 2/);
  } finally {
    child.kill("SIGTERM");
    await output.cancel();
    await child.stderr.cancel();
    await child.status;
  }
});
