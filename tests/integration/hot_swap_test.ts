/** Hot swap through real sockets: file edits, POST /reload, state kept, bad edits refused. */
import assert from "node:assert/strict";
import { delay, repoPath, startGateway, startUpstream, waitFor } from "../_helpers.ts";

const TAG = repoPath("tests/fixtures/tag_plugin.ts");
const HITS = repoPath("plugins/examples/hit_counter.ts");

function config(upstream: string, tag: string, extra = ""): string {
  return `routes:
  - name: api
    upstream: { url: ${upstream} }
    pipeline:
      - plugin: ${TAG}
        with: { value: ${tag} }
      - plugin: ${HITS}
        with: { header: x-hits }
      - proxy: {}
${extra}`;
}

async function get(url: string, init?: RequestInit) {
  const response = await fetch(url, init);
  const body = await response.text();
  return { status: response.status, headers: response.headers, body };
}

async function version(adminUrl: string): Promise<number> {
  const status = await (await fetch(`${adminUrl}/status`)).json();
  return status.version;
}

Deno.test("an edit swaps the pipeline; a slow request in flight finishes on the old one", async () => {
  await using upstream = startUpstream(async (request) => {
    if (new URL(request.url).pathname === "/slow") await delay(600);
    return new Response("ok");
  });
  await using gw = await startGateway(config(upstream.url, "v1"));
  const slow = get(`${gw.url}/slow`);
  await delay(100);
  await gw.config.write(config(upstream.url, "v2"));
  assert.ok(await waitFor(async () => (await version(gw.adminUrl)) === 2), "no reload seen");
  const fresh = await get(`${gw.url}/fast`);
  assert.equal(fresh.status, 200);
  assert.equal(fresh.headers.get("x-tag"), "v2");
  const old = await slow;
  assert.equal(old.status, 200);
  assert.equal(old.body, "ok");
  assert.equal(old.headers.get("x-tag"), "v1");
});

Deno.test("no request fails while the config is swapped again and again", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(config(upstream.url, "v0"));
  let stop = false;
  const statuses: number[] = [];
  const client = async () => {
    while (!stop) {
      const response = await get(`${gw.url}/x`);
      statuses.push(response.status);
    }
  };
  const clients = [client(), client(), client()];
  for (let i = 1; i <= 5; i++) {
    await gw.config.write(config(upstream.url, `v${i}`));
    assert.ok(await waitFor(async () => (await version(gw.adminUrl)) === i + 1));
  }
  stop = true;
  await Promise.all(clients);
  assert.ok(statuses.length > 20, `only ${statuses.length} requests were sent`);
  assert.deepEqual(statuses.filter((status) => status !== 200), []);
});

Deno.test("an invalid edit keeps the old pipeline serving and reports the error with path and line", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(config(upstream.url, "good"));
  await gw.config.write(config(upstream.url, "bad").replace("proxy: {}", "proxxy: {}"));
  assert.ok(
    await waitFor(async () =>
      (await (await fetch(`${gw.adminUrl}/status`)).json()).last_reload_error !== null
    ),
  );
  const response = await get(`${gw.url}/x`);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("x-tag"), "good");

  const status = await (await fetch(`${gw.adminUrl}/status`)).json();
  assert.equal(status.version, 1);
  const error = status.last_reload_error.errors[0];
  assert.equal(error.path, "routes[0].pipeline[2].proxxy");
  assert.equal(error.line, 9);
  assert.match(error.message, /Unknown plugin "proxxy"/);

  const logged = gw.logs.find("config reload failed; the running pipeline keeps serving");
  assert.ok(logged, "the failure was not logged");
  assert.deepEqual((logged.errors as { path: string; line: number }[])[0], {
    path: "routes[0].pipeline[2].proxxy",
    line: 9,
    column: 9,
    message: error.message,
  });
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  assert.match(metrics, /sluice_config_reloads_total\{result="error"\} 1/);

  await gw.config.write(config(upstream.url, "fixed"));
  assert.ok(await waitFor(async () => (await version(gw.adminUrl)) === 2));
  const after = await (await fetch(`${gw.adminUrl}/status`)).json();
  assert.equal(after.last_reload_error, null);
  assert.equal((await get(`${gw.url}/x`)).headers.get("x-tag"), "fixed");
});

Deno.test("editing a custom plugin's file re-imports it fresh", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const modUrl = new URL("../../mod.ts", import.meta.url).href;
  const source = (word: string) =>
    `import { definePlugin } from "${modUrl}";
import { z } from "zod";
export default definePlugin({
  name: "word",
  options: z.object({}),
  create() {
    return async function word(_ctx, next) {
      const response = await next();
      response.headers.set("x-word", "${word}");
      return response;
    };
  },
});
`;
  await using gw = await startGateway(
    `routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - plugin: ./word.ts
      - proxy: {}
`,
    {},
    { "word.ts": source("first") },
  );
  assert.equal((await get(`${gw.url}/x`)).headers.get("x-word"), "first");
  await Deno.writeTextFile(`${gw.config.dir}/word.ts`, source("second"));
  assert.ok(await waitFor(async () => (await version(gw.adminUrl)) === 2), "no reload seen");
  assert.equal((await get(`${gw.url}/x`)).headers.get("x-word"), "second");
});

Deno.test("a plugin that throws while loading leaves the old pipeline serving", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(config(upstream.url, "stable"));
  await Deno.writeTextFile(
    `${gw.config.dir}/explodes.ts`,
    `throw new Error("plugin exploded while loading");\n`,
  );
  await gw.config.write(
    config(upstream.url, "stable").replace(
      "      - proxy: {}",
      "      - plugin: ./explodes.ts\n      - proxy: {}",
    ),
  );
  assert.ok(
    await waitFor(async () =>
      (await (await fetch(`${gw.adminUrl}/status`)).json()).last_reload_error !== null
    ),
  );
  const status = await (await fetch(`${gw.adminUrl}/status`)).json();
  assert.equal(status.version, 1);
  assert.equal(status.last_reload_error.errors[0].path, "routes[0].pipeline[2].plugin");
  assert.equal(status.last_reload_error.errors[0].line, 9);
  assert.match(status.last_reload_error.errors[0].message, /plugin exploded while loading/);
  const response = await get(`${gw.url}/x`);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("x-tag"), "stable");
});

Deno.test("a plugin whose create throws leaves the old pipeline serving", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const modUrl = new URL("../../mod.ts", import.meta.url).href;
  await using gw = await startGateway(config(upstream.url, "stable"), {}, {
    "bad_create.ts": `import { definePlugin } from "${modUrl}";
import { z } from "zod";
export default definePlugin({
  name: "bad-create",
  options: z.object({}),
  create() { throw new Error("cannot open the thing"); },
});
`,
  });
  const result = await (async () => {
    await gw.config.write(
      config(upstream.url, "stable").replace(
        "      - proxy: {}",
        "      - plugin: ./bad_create.ts\n      - proxy: {}",
      ),
    );
    const response = await fetch(`${gw.adminUrl}/reload`, { method: "POST" });
    return { status: response.status, body: await response.json() };
  })();
  assert.equal(result.status, 422);
  assert.equal(result.body.errors[0].path, "routes[0].pipeline[2]");
  assert.match(result.body.errors[0].message, /cannot open the thing/);
  assert.equal((await get(`${gw.url}/x`)).headers.get("x-tag"), "stable");
});

Deno.test("plugin state survives an unrelated edit and resets when its options change", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(config(upstream.url, "a"));
  const hits = async () => Number((await get(`${gw.url}/x`)).headers.get("x-hits"));
  assert.equal(await hits(), 1);
  assert.equal(await hits(), 2);

  // Another plugin's options and a new route change; the counter's entry does not.
  await gw.config.write(config(
    upstream.url,
    "b",
    `  - name: other
    match: { path_prefix: /other }
    upstream: { url: ${upstream.url} }
    pipeline: [ { proxy: {} } ]
`,
  ));
  assert.ok(await waitFor(async () => (await version(gw.adminUrl)) === 2));
  const response = await get(`${gw.url}/x`);
  assert.equal(response.headers.get("x-tag"), "b");
  assert.equal(Number(response.headers.get("x-hits")), 3);

  // The counter's own options change: it starts again.
  await gw.config.write(config(upstream.url, "b").replace("header: x-hits", "header: x-count"));
  assert.ok(await waitFor(async () => (await version(gw.adminUrl)) === 3));
  assert.equal((await get(`${gw.url}/x`)).headers.get("x-count"), "1");
});

Deno.test("POST /reload reloads even when the file did not change", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(config(upstream.url, "a"), { watch: false });
  const response = await fetch(`${gw.adminUrl}/reload`, { method: "POST" });
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), { ok: true, version: 2 });
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  assert.match(metrics, /sluice_config_reloads_total\{result="ok"\} 2/);
});

Deno.test("a file truncated before it is written keeps the old pipeline and its state serving", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(config(upstream.url, "before"));
  assert.equal((await get(`${gw.url}/x`)).headers.get("x-hits"), "1");
  await gw.config.write("");
  assert.ok(
    await waitFor(async () =>
      (await (await fetch(`${gw.adminUrl}/status`)).json()).last_reload_error !== null
    ),
    "the empty file is refused",
  );
  const during = await get(`${gw.url}/x`);
  assert.equal(during.status, 200);
  assert.equal(during.headers.get("x-tag"), "before");
  assert.equal(during.headers.get("x-hits"), "2");
  await gw.config.write(config(upstream.url, "after"));
  assert.ok(await waitFor(async () => (await version(gw.adminUrl)) === 2));
  const after = await get(`${gw.url}/x`);
  assert.equal(after.headers.get("x-tag"), "after");
});

Deno.test("undoing a bad edit clears the reload error on /status", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(config(upstream.url, "good"));
  const status = async () => await (await fetch(`${gw.adminUrl}/status`)).json();
  await gw.config.write(config(upstream.url, "good").replace("proxy: {}", "proxxy: {}"));
  assert.ok(await waitFor(async () => (await status()).last_reload_error !== null));
  await gw.config.write(config(upstream.url, "good"));
  assert.ok(
    await waitFor(async () => (await status()).last_reload_error === null),
    "the error stays after the file is back to what runs",
  );
  assert.equal((await status()).version, 1);
});

Deno.test("a plugin that failed to load is watched: fixing its file reloads", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(config(upstream.url, "stable"));
  const plugin = `${gw.config.dir}/late.ts`;
  await Deno.writeTextFile(plugin, "export default definePlugin(;\n");
  await gw.config.write(
    config(upstream.url, "stable").replace(
      "      - proxy: {}",
      "      - plugin: ./late.ts\n      - proxy: {}",
    ),
  );
  assert.ok(
    await waitFor(async () =>
      (await (await fetch(`${gw.adminUrl}/status`)).json()).last_reload_error !== null
    ),
  );
  const modUrl = new URL("../../mod.ts", import.meta.url).href;
  await Deno.writeTextFile(
    plugin,
    `import { definePlugin } from "${modUrl}";
import { z } from "zod";
export default definePlugin({ name: "late", options: z.object({}), create: () => (_ctx, next) => next() });
`,
  );
  assert.ok(
    await waitFor(async () => (await version(gw.adminUrl)) === 2, 5_000),
    "fixing the plugin reloads",
  );
});

/** Config layouts that change without an edit of the file itself. */
const LAYOUTS: {
  name: string;
  /** Lays out v1 under `root`; returns the config path the gateway is given. */
  setup(root: string, text: string): Promise<string>;
  /** Changes the config to `text` the way that layout's tools do. */
  change(root: string, text: string, round: number): Promise<void>;
}[] = [
  {
    name: "a symlink to a file in another folder, whose target is edited",
    async setup(root, text) {
      await Deno.mkdir(`${root}/real`);
      await Deno.mkdir(`${root}/etc`);
      await Deno.writeTextFile(`${root}/real/gateway.yaml`, text);
      await Deno.symlink(`${root}/real/gateway.yaml`, `${root}/etc/gateway.yaml`);
      return `${root}/etc/gateway.yaml`;
    },
    async change(root, text) {
      await Deno.writeTextFile(`${root}/real/gateway.yaml.tmp`, text);
      await Deno.rename(`${root}/real/gateway.yaml.tmp`, `${root}/real/gateway.yaml`);
    },
  },
  {
    name: "a Kubernetes ConfigMap volume, whose ..data link is swapped to a new folder",
    async setup(root, text) {
      await Deno.mkdir(`${root}/..v0`);
      await Deno.writeTextFile(`${root}/..v0/gateway.yaml`, text);
      await Deno.symlink("..v0", `${root}/..data`);
      await Deno.symlink("..data/gateway.yaml", `${root}/gateway.yaml`);
      return `${root}/gateway.yaml`;
    },
    async change(root, text, round) {
      await Deno.mkdir(`${root}/..v${round}`);
      await Deno.writeTextFile(`${root}/..v${round}/gateway.yaml`, text);
      await Deno.symlink(`..v${round}`, `${root}/..data_tmp`);
      await Deno.rename(`${root}/..data_tmp`, `${root}/..data`);
      await Deno.remove(`${root}/..v${round - 1}`, { recursive: true });
    },
  },
  {
    name: "a current -> releases/N link repointed at a new release",
    async setup(root, text) {
      await Deno.mkdir(`${root}/releases/0`, { recursive: true });
      await Deno.writeTextFile(`${root}/releases/0/gateway.yaml`, text);
      await Deno.symlink(`${root}/releases/0`, `${root}/current`);
      return `${root}/current/gateway.yaml`;
    },
    async change(root, text, round) {
      await Deno.mkdir(`${root}/releases/${round}`);
      await Deno.writeTextFile(`${root}/releases/${round}/gateway.yaml`, text);
      await Deno.symlink(`${root}/releases/${round}`, `${root}/current.tmp`);
      await Deno.rename(`${root}/current.tmp`, `${root}/current`);
    },
  },
  {
    name: "a folder replaced whole",
    async setup(root, text) {
      await Deno.mkdir(`${root}/conf`);
      await Deno.writeTextFile(`${root}/conf/gateway.yaml`, text);
      return `${root}/conf/gateway.yaml`;
    },
    async change(root, text) {
      await Deno.mkdir(`${root}/conf.new`);
      await Deno.writeTextFile(`${root}/conf.new/gateway.yaml`, text);
      await Deno.remove(`${root}/conf`, { recursive: true });
      await Deno.rename(`${root}/conf.new`, `${root}/conf`);
    },
  },
];

for (const layout of LAYOUTS) {
  Deno.test(`reload follows ${layout.name}, again and again, and an edit after`, async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    const root = await Deno.makeTempDir({ prefix: "sluice-layout-" });
    try {
      const file = await layout.setup(root, config(upstream.url, "v1"));
      await using gw = await startGateway("", { configFile: file });
      for (let round = 1; round <= 2; round++) {
        const tag = `v${round + 1}`;
        await layout.change(root, config(upstream.url, tag), round);
        assert.ok(
          await waitFor(async () => (await get(`${gw.url}/x`)).headers.get("x-tag") === tag),
          `round ${round}: still serving ${(await get(`${gw.url}/x`)).headers.get("x-tag")}`,
        );
        assert.equal(await version(gw.adminUrl), round + 1);
      }
      // And then an edit of the file where it now is (its watch may be gone
      // with the old folder: the watcher also checks every file every 2 s).
      await Deno.writeTextFile(file, config(upstream.url, "v4"));
      assert.ok(
        await waitFor(async () => (await get(`${gw.url}/x`)).headers.get("x-tag") === "v4"),
        "an edit in place after the change",
      );
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });
}

Deno.test("a reload warns about listener settings it cannot apply, compared with what is bound", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const withPort = (port: number) => `listen: { port: ${port} }\n${config(upstream.url, "v")}`;
  await using gw = await startGateway(withPort(8111));
  const warnings = () =>
    gw.logs.lines.filter((line) =>
      line.msg === "config changes that need a restart were not applied"
    );
  await gw.config.write(withPort(8112));
  assert.equal((await gw.gateway.reload("test")).ok, true);
  assert.deepEqual(warnings().map((line) => line.keys), [["listen"]]);
  // Put back: the file again says what is bound, so nothing waits for a restart.
  await gw.config.write(withPort(8111));
  assert.equal((await gw.gateway.reload("test")).ok, true);
  assert.equal(warnings().length, 1);
});

Deno.test("a reload that changes concurrency or breaker options keeps the requests in flight and an open breaker", async () => {
  let inflight = 0;
  let peak = 0;
  await using upstream = startUpstream(async (request) => {
    const path = new URL(request.url).pathname;
    if (path === "/fail") return new Response("broken", { status: 500 });
    inflight++;
    peak = Math.max(peak, inflight);
    await delay(path === "/slow" ? 800 : 50);
    inflight--;
    return new Response("ok");
  });
  const yaml = (queueTimeout: string, openFor: string) =>
    `routes:
  - name: breaking
    match: { path_prefix: /fail }
    upstream: { url: ${upstream.url} }
    pipeline:
      - circuit-breaker: { failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: ${openFor} }
      - proxy: {}
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - concurrency: { max: 1, queue: 2, queue_timeout: ${queueTimeout} }
      - proxy: {}
`;
  await using gw = await startGateway(yaml("3s", "30s"));
  for (let i = 0; i < 4; i++) await get(`${gw.url}/fail`);
  assert.equal((await get(`${gw.url}/fail`)).status, 503);

  const slow = get(`${gw.url}/slow`);
  await delay(100);
  await gw.config.write(yaml("2s", "60s"));
  assert.ok(await waitFor(async () => (await version(gw.adminUrl)) === 2));
  // The slow request still holds the one slot: this one waits for it.
  const next = await get(`${gw.url}/x`);
  assert.equal(next.status, 200);
  assert.equal((await slow).status, 200);
  assert.equal(peak, 1, "the upstream saw more than max at once");

  const open = await get(`${gw.url}/fail`);
  assert.equal(open.status, 503, "the breaker stayed open");
  assert.ok(Number(open.headers.get("retry-after")) > 50, "open_for is the new 60 s");
});

Deno.test("a request still on the pipeline a reload replaced brings back no old concurrency limit", async () => {
  let inflight = 0;
  let peak = 0;
  await using upstream = startUpstream(async () => {
    inflight++;
    peak = Math.max(peak, inflight);
    await delay(400);
    inflight--;
    return new Response("ok");
  });
  const yaml = (max: number) =>
    `routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - plugin: ${repoPath("tests/fixtures/delay_plugin.ts")}
      - concurrency: { max: ${max}, queue: 10, queue_timeout: 5s }
      - proxy: {}
`;
  await using gw = await startGateway(yaml(5));
  // This request reaches the concurrency step 600 ms from now, on the old pipeline.
  const late = get(`${gw.url}/x`, { headers: { "x-delay": "600" } });
  await delay(50);
  await gw.config.write(yaml(1));
  assert.ok(await waitFor(async () => (await version(gw.adminUrl)) === 2));
  const answers = await Promise.all(Array.from({ length: 4 }, () => get(`${gw.url}/x`)));
  assert.deepEqual(answers.map((answer) => answer.status), [200, 200, 200, 200]);
  assert.equal((await late).status, 200);
  assert.equal(peak, 1, "the upstream saw more than the new max at once");
});

Deno.test("a route a reload removes or renames leaves /metrics: names do not pile up", async () => {
  await using upstream = startUpstream(async (request) => {
    if (new URL(request.url).pathname === "/slow") await delay(500);
    return new Response("ok");
  });
  const named = (name: string) =>
    `routes:
  - name: ${name}
    upstream: { url: ${upstream.url} }
    pipeline:
      - sliding-window: { limit: 100, window: 1m }
      - token-bucket: { rate: 20/s, burst: 1, max_delay: 1s } # the second request waits
      - proxy: {}
`;
  await using gw = await startGateway(named("first"));
  const scrape = async () => await (await fetch(`${gw.adminUrl}/metrics`)).text();
  // A request on the first route that finishes after the reload counts it again: a scrape drops it.
  let slow: Promise<unknown> = Promise.resolve();
  for (const name of ["first", "second", "third"]) {
    if (name === "second") slow = get(`${gw.url}/slow`);
    if (name !== "first") {
      await delay(100);
      await gw.config.write(named(name));
      const reload = await fetch(`${gw.adminUrl}/reload`, { method: "POST" });
      assert.equal(reload.status, 200);
      await reload.body?.cancel();
    }
    assert.equal((await get(`${gw.url}/x`)).status, 200);
    assert.equal((await get(`${gw.url}/x`)).status, 200);
  }
  await slow;
  const text = await scrape();
  assert.match(text, /sluice_requests_total\{route="third",outcome="proxied"\} 2/);
  assert.match(text, /sluice_limit_decisions_total\{route="third"/);
  assert.match(text, /sluice_upstream_duration_seconds_count\{route="third"/);
  assert.match(text, /sluice_request_duration_seconds_count\{route="third"/);
  assert.match(text, /sluice_shaper_delay_seconds_count\{route="third"\} 1/);
  const stale = text.split("\n").filter((line) => /route="(first|second)"/.test(line));
  assert.deepEqual(stale, []);
});
