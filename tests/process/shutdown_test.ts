/** The gateway as a process: SIGTERM drains, SIGHUP reloads, stdout is JSON lines. */
import assert from "node:assert/strict";
import { delay, freePort, startUpstream, tempConfig, waitFor } from "../_helpers.ts";
import { spawnGateway } from "../_process.ts";

function configYaml(upstream: string, adminPort: number, grace = "5s"): string {
  return `admin: { port: ${adminPort} }
shutdown: { grace: ${grace} }
routes:
  - name: api
    upstream: { url: ${upstream} }
    pipeline:
      - identify: { from: [header:x-api-key, ip] }
      - proxy: {}
`;
}

/** A request the upstream holds: its status once it ends, 0 when the connection dies. */
function stuckRequest(url: string): Promise<number> {
  return fetch(`${url}/stuck`).then(
    async (response) => {
      await response.body?.cancel();
      return response.status;
    },
    () => 0,
  );
}

Deno.test("SIGTERM stops accepting, lets requests in flight finish, and exits 0", async () => {
  let seen = 0;
  await using upstream = startUpstream(async () => {
    seen++;
    await delay(700);
    return new Response("finished");
  });
  const adminPort = freePort();
  await using config = await tempConfig(configYaml(upstream.url, adminPort));
  const port = freePort();
  const gw = await spawnGateway(config.file, { port, adminPort });
  const inflight = Array.from(
    { length: 5 },
    () =>
      fetch(`${gw.url}/slow`, { headers: { "x-api-key": "secret-key-123" } }).then(async (
        response,
      ) => ({
        status: response.status,
        body: await response.text(),
        connection: response.headers.get("connection"),
      })),
  );
  assert.ok(await waitFor(() => seen === 5), "the upstream did not see the requests");
  gw.child.kill("SIGTERM");
  await delay(150);
  const late = await fetch(`${gw.url}/late`).then(
    async (response) => {
      await response.body?.cancel();
      return "answered";
    },
    () => "refused",
  );
  assert.equal(late, "refused");
  // Draining: /ready fails, so a load balancer sends new requests elsewhere.
  const ready = await fetch(`http://127.0.0.1:${adminPort}/ready`);
  assert.equal(ready.status, 503);
  assert.equal((await ready.json()).status, "draining");
  const results = await Promise.all(inflight);
  // Each says its connection ends with it: no client sends its next request on a closing socket.
  assert.deepEqual(
    results,
    Array(5).fill({ status: 200, body: "finished", connection: "close" }),
  );
  const { code, lines } = await gw.exited;
  assert.equal(code, 0);
  const parsed = lines.map((line) => JSON.parse(line));
  assert.ok(parsed.some((line) => line.msg === "signal received" && line.signal === "SIGTERM"));
  assert.deepEqual(parsed.at(-1), { ...parsed.at(-1), msg: "stopped", drained: true });
  assert.ok(lines.every((line) => !line.includes("secret-key-123")), "a raw key reached the log");
});

Deno.test("a request longer than the grace period does not hold the exit", async () => {
  await using upstream = startUpstream(async (request) => {
    await delay(5_000).catch(() => {});
    return request.signal.aborted ? new Response(null) : new Response("late");
  });
  const adminPort = freePort();
  await using config = await tempConfig(configYaml(upstream.url, adminPort, "300ms"));
  const gw = await spawnGateway(config.file, { adminPort });
  const stuck = stuckRequest(gw.url);
  await delay(200);
  const started = Date.now();
  gw.child.kill("SIGTERM");
  const { code, lines } = await gw.exited;
  const waited = Date.now() - started;
  assert.equal(code, 0);
  assert.ok(waited < 4_000, `exit took ${waited} ms, the grace period is 300 ms`);
  assert.ok(
    lines.some((line) => JSON.parse(line).msg === "grace period over with requests in flight"),
  );
  await stuck;
});

Deno.test("a second SIGTERM or SIGINT exits at once, without waiting for the grace period", async () => {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    await using upstream = startUpstream(async (request) => {
      // Until the gateway goes away (or 20 s).
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 20_000);
        request.signal.addEventListener("abort", () => {
          clearTimeout(timer);
          resolve();
        });
      });
      return new Response("late");
    });
    const adminPort = freePort();
    await using config = await tempConfig(configYaml(upstream.url, adminPort, "30s"));
    const gw = await spawnGateway(config.file, { adminPort });
    const stuck = stuckRequest(gw.url);
    await delay(200);
    const started = Date.now();
    gw.child.kill(signal);
    await delay(700);
    gw.child.kill(signal);
    const { code, lines } = await gw.exited;
    const waited = Date.now() - started;
    assert.equal(code, signal === "SIGINT" ? 130 : 143, signal);
    assert.ok(waited < 5_000, `${signal}: exit took ${waited} ms`);
    assert.ok(lines.some((line) => JSON.parse(line).msg.startsWith("second signal")), signal);
    await stuck;
  }
});

Deno.test("one signal delivered twice a moment apart (the terminal and deno task both send it) still drains", async () => {
  await using upstream = startUpstream(async () => {
    await delay(600);
    return new Response("finished");
  });
  const adminPort = freePort();
  await using config = await tempConfig(configYaml(upstream.url, adminPort));
  const gw = await spawnGateway(config.file, { adminPort });
  const slow = fetch(`${gw.url}/slow`).then(async (response) => await response.text(), () => "");
  await delay(200);
  gw.child.kill("SIGINT");
  // The copy from the other sender comes a moment later (sent at once, the two would merge).
  await delay(50);
  gw.child.kill("SIGINT");
  assert.equal(await slow, "finished");
  const { code } = await gw.exited;
  assert.equal(code, 0);
});

Deno.test("SIGHUP reloads the config", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const adminPort = freePort();
  await using config = await tempConfig(configYaml(upstream.url, adminPort));
  const gw = await spawnGateway(config.file, { adminPort });
  try {
    gw.child.kill("SIGHUP");
    assert.ok(
      await waitFor(async () =>
        (await (await fetch(`${gw.adminUrl}/status`)).json()).version === 2
      ),
      "SIGHUP did not reload",
    );
  } finally {
    gw.child.kill("SIGTERM");
  }
  const { code, lines } = await gw.exited;
  assert.equal(code, 0);
  assert.ok(
    lines.some((line) => {
      const parsed = JSON.parse(line);
      return parsed.msg === "config reloaded" && parsed.trigger === "SIGHUP";
    }),
  );
});
