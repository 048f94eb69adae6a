import assert from "node:assert/strict";
import { ConfigError, type ConfigIssue, loadConfig } from "../src/config/load_config.ts";
import { sha256Hex } from "../src/digest.ts";
import { BUILTIN_PLUGINS } from "../src/plugins/mod.ts";
import { tempConfig } from "./_helpers.ts";

/** The one route a config needs, for tests about the rest of the file. */
const A_ROUTE = `routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
`;

async function issuesOf(yaml: string, env: Record<string, string> = {}): Promise<ConfigIssue[]> {
  await using config = await tempConfig(yaml);
  try {
    await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: (name) => env[name] });
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${error}`);
    return error.issues;
  }
  assert.fail("the config loaded, but errors were expected");
}

Deno.test("a valid config loads with defaults applied", async () => {
  await using config = await tempConfig(`
routes:
  - name: api
    match: { path_prefix: /api, methods: [GET] }
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - identify: { from: [header:x-api-key, ip] }
      - proxy:
`);
  const loaded = await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: () => undefined });
  assert.equal(loaded.config.listen.port, 8080);
  assert.equal(loaded.config.admin.hostname, "127.0.0.1");
  assert.equal(loaded.config.store.kind, undefined);
  assert.equal(loaded.config.store.on_failure, "local");
  assert.equal(loaded.config.store.timeout, 100);
  assert.equal(loaded.routes[0]!.upstream!.timeout, 30_000);
  assert.deepEqual(loaded.routes[0]!.pipeline.map((entry) => entry.name), ["identify", "proxy"]);
  assert.deepEqual(loaded.routes[0]!.pipeline[0]!.options, {
    from: ["header:x-api-key", "ip"],
    required: false,
  });
});

Deno.test("every error names its YAML path and line", async () => {
  const issues = await issuesOf(`listen:
  port: eighty
store:
  timeout: 5x
routes:
  - name: api
    bogus: 1
    upstream: { url: http://127.0.0.1:9001, timeout: 3 }
    pipeline:
      - proxy: {}
`);
  const byPath = new Map(issues.map((issue) => [issue.path, issue]));
  assert.equal(byPath.get("listen.port")?.line, 2);
  assert.equal(byPath.get("store.timeout")?.line, 4);
  assert.match(byPath.get("store.timeout")!.message, /Invalid duration "5x"/);
  assert.equal(byPath.get("routes[0].bogus")?.line, 7);
  assert.match(byPath.get("routes[0].bogus")!.message, /Unrecognized key "bogus"/);
  assert.equal(byPath.get("routes[0].upstream.timeout")?.line, 8);
  assert.equal(issues.length, 4);
});

Deno.test("an unknown plugin is an error at its line listing the built-ins", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - identify: {}
      - rate-limitr: { limit: 10 }
`);
  assert.equal(issues.length, 1);
  assert.equal(issues[0]!.path, "routes[0].pipeline[1].rate-limitr");
  assert.equal(issues[0]!.line, 6);
  assert.match(issues[0]!.message, /Unknown plugin "rate-limitr"/);
  assert.match(issues[0]!.message, /identify/);
});

Deno.test("plugin options are validated by the plugin's schema", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - identify: { from: [cookie:session], required: maybe }
`);
  const paths = issues.map((issue) => issue.path).sort();
  assert.deepEqual(paths, [
    "routes[0].pipeline[0].identify.from[0]",
    "routes[0].pipeline[0].identify.required",
  ]);
  assert.ok(issues.every((issue) => issue.line === 5));
  assert.match(issues.find((i) => i.path.endsWith("from[0]"))!.message, /Unknown identity source/);
});

Deno.test("an entry naming two plugins is an error", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - { identify: {}, proxy: {} }
`);
  assert.equal(issues.length, 1);
  assert.match(issues[0]!.message, /names 2 \(identify, proxy\)/);
  assert.equal(issues[0]!.line, 5);
});

Deno.test("proxy without an upstream is an error", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    pipeline:
      - proxy: {}
`);
  assert.equal(issues.length, 1);
  assert.match(issues[0]!.message, /needs an upstream/);
});

Deno.test("duplicate route names are an error at the second", async () => {
  const issues = await issuesOf(`routes:
  - name: api
  - name: api
`);
  assert.equal(issues.length, 1);
  assert.equal(issues[0]!.path, "routes[1].name");
  assert.equal(issues[0]!.line, 3);
});

Deno.test("invalid YAML is an error with its line", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    match: { path_prefix: /x
`);
  assert.ok(issues.length >= 1);
  assert.match(issues[0]!.message, /Invalid YAML/);
  assert.ok(issues[0]!.line !== undefined && issues[0]!.line >= 3);
});

Deno.test("${VAR} and ${VAR:-default} are interpolated, whole placeholders keep their type", async () => {
  await using config = await tempConfig(`listen: { port: \${PORT:-8181} }
admin: { token: "\${ADMIN_TOKEN:-}" }
routes:
  - name: api
    upstream: { url: "http://\${UP_HOST}:9001", timeout: \${UP_TIMEOUT:-2s} }
`);
  const loaded = await loadConfig(config.file, {
    plugins: BUILTIN_PLUGINS,
    env: (name) => ({ UP_HOST: "backend" } as Record<string, string>)[name],
  });
  assert.equal(loaded.config.listen.port, 8181);
  assert.equal(loaded.config.admin.token, "");
  assert.equal(loaded.routes[0]!.upstream!.url, "http://backend:9001");
  assert.equal(loaded.routes[0]!.upstream!.timeout, 2_000);
});

Deno.test("an unset variable is an error at its line", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    upstream: { url: "http://\${NOPE}:9001" }
`);
  assert.equal(issues.length, 1);
  assert.equal(issues[0]!.path, "routes[0].upstream.url");
  assert.equal(issues[0]!.line, 3);
  assert.match(issues[0]!.message, /NOPE is not set/);
});

Deno.test("a bad trusted proxy CIDR is an error", async () => {
  const issues = await issuesOf(`trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, banana]
${A_ROUTE}`);
  assert.deepEqual(issues.map((issue) => issue.path), ["trusted_proxies[1]", "trusted_proxies[2]"]);
});

Deno.test("a custom plugin that fails to load is an error at its entry", async () => {
  await using config = await tempConfig(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - plugin: ./broken.ts
      - plugin: ./missing.ts
      - plugin: ./not_a_plugin.ts
`);
  await Deno.writeTextFile(`${config.dir}/broken.ts`, `throw new Error("boom at import");\n`);
  await Deno.writeTextFile(`${config.dir}/not_a_plugin.ts`, `export default 42;\n`);
  const error = await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: () => undefined })
    .then(() => undefined, (error) => error);
  assert.ok(error instanceof ConfigError);
  const messages = error.issues.map((issue) => `${issue.line} ${issue.path} ${issue.message}`);
  assert.equal(messages.length, 3);
  assert.match(
    messages[0]!,
    /^5 routes\[0\]\.pipeline\[0\]\.plugin Cannot load plugin ".\/broken.ts": .*boom at import/,
  );
  assert.match(
    messages[1]!,
    /^6 routes\[0\]\.pipeline\[1\]\.plugin Cannot load plugin ".\/missing.ts"/,
  );
  assert.match(messages[2]!, /^7 .* the default export is not a plugin/);
});

Deno.test("a custom plugin named like a built-in is an error at its entry", async () => {
  await using config = await tempConfig(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - plugin: ./fake_proxy.ts
      - proxy: {}
`);
  await Deno.writeTextFile(
    `${config.dir}/fake_proxy.ts`,
    `import { definePlugin } from "${new URL("../mod.ts", import.meta.url).href}";
import { z } from "zod";
export default definePlugin({ name: "proxy", options: z.object({}), create: () => (_c, next) => next() });
`,
  );
  const error = await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: () => undefined })
    .then(() => undefined, (error) => error);
  assert.ok(error instanceof ConfigError, String(error));
  assert.equal(error.issues.length, 1);
  assert.equal(error.issues[0]!.path, "routes[0].pipeline[0].plugin");
  assert.equal(error.issues[0]!.line, 5);
  assert.match(error.issues[0]!.message, /named "proxy", as a built-in is/);
});

Deno.test("a custom plugin's options are validated by its schema", async () => {
  const pluginUrl = new URL("../plugins/examples/request_id.ts", import.meta.url).href;
  const issues = await issuesOf(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - plugin: ${pluginUrl.replace("file://", "")}
        with: { header: "not a header", extra: 1 }
`);
  assert.deepEqual(issues.map((issue) => issue.path).sort(), [
    "routes[0].pipeline[0].with.extra",
    "routes[0].pipeline[0].with.header",
  ]);
  assert.ok(issues.every((issue) => issue.line === 6));
});

Deno.test("an empty file (or only comments) is an error, not a gateway with no routes", async () => {
  for (const text of ["", "\n\n", "# nothing yet\n"]) {
    const issues = await issuesOf(text);
    assert.equal(issues.length, 1);
    assert.equal(issues[0]!.line, 1);
    assert.match(issues[0]!.message, /The file is empty/);
  }
});

Deno.test("YAML aliases may share one pipeline among many routes; a dangling alias is a clean error", async () => {
  const routes = Array.from({ length: 150 }, (_, i) =>
    `  - name: r${i}
    match: { path_prefix: /r${i} }
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: ${i === 0 ? "&std\n      - identify: {}\n      - proxy: {}" : "*std"}`).join("\n");
  await using config = await tempConfig(`routes:\n${routes}\n`);
  const loaded = await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: () => undefined });
  assert.equal(loaded.routes.length, 150);
  assert.deepEqual(loaded.routes[149]!.pipeline.map((entry) => entry.name), ["identify", "proxy"]);

  const issues = await issuesOf(`admin: { token: *nope }
routes: []
`);
  assert.equal(issues.length, 1);
  assert.equal(issues[0]!.line, 1);
  assert.match(issues[0]!.message, /^Invalid YAML/);
});

Deno.test("a plugin whose module takes too long to load is an error after the time limit, and a later load works", async () => {
  await using config = await tempConfig(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - plugin: ./stuck.ts
      - proxy: {}
`);
  const plugin = `${config.dir}/stuck.ts`;
  // (A module that never finishes would do the same; Deno's test runner reports those itself.)
  await Deno.writeTextFile(
    plugin,
    "await new Promise((resolve) => setTimeout(resolve, 1_000));\nexport default 1;\n",
  );
  const options = { plugins: BUILTIN_PLUGINS, env: () => undefined, pluginImportTimeoutMs: 200 };
  const error = await loadConfig(config.file, options).catch((error) => error);
  assert.ok(error instanceof ConfigError, String(error));
  assert.equal(error.issues[0]!.path, "routes[0].pipeline[0].plugin");
  assert.match(error.issues[0]!.message, /did not finish loading within 0.2 s/);
  await Deno.writeTextFile(
    plugin,
    `import { definePlugin } from "${
      new URL("../src/plugin.ts", import.meta.url).href
    }";\nimport { z } from "zod";\nexport default definePlugin({ name: "fine", options: z.object({}), create: () => (_ctx, next) => next() });\n`,
  );
  const loaded = await loadConfig(config.file, options);
  assert.deepEqual(loaded.routes[0]!.pipeline.map((entry) => entry.name), ["fine", "proxy"]);
  await new Promise((resolve) => setTimeout(resolve, 1_000)); // the slow module's timer ends
});

Deno.test("a config path with . and .. is read as the same file (the watcher matches exact paths)", async () => {
  await using config = await tempConfig(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
`);
  const name = config.file.slice(config.dir.length + 1);
  const loaded = await loadConfig(`${config.dir}/sub/.././${name}`, {
    plugins: BUILTIN_PLUGINS,
    env: () => undefined,
  });
  assert.equal(loaded.file, config.file);
});

Deno.test("a token-bucket rate whose count is not whole is an error (the headers' quota is an integer)", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - token-bucket: { rate: 0.5/s, burst: 2 }
      - proxy: {}
`);
  assert.equal(issues.length, 1);
  assert.equal(issues[0]!.path, "routes[0].pipeline[0].token-bucket.rate");
  assert.equal(issues[0]!.line, 5);
  assert.match(issues[0]!.message, /whole number: write 30\/m, not 0.5\/s/);
});

Deno.test("a rate of 0, a window of 0 and a wait beyond a timer's reach are errors at their lines", async () => {
  const issues = await issuesOf(`tiers:
  free: { limit: 2, window: 0ms }
shutdown: { grace: 30d }
routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001, timeout: 99999999999999999999d, read_timeout: 0s }
    pipeline:
      - token-bucket: { rate: 0/s }
      - sliding-window: { limits: [10/s, 0.0/h] }
      - sliding-window: { limit: 5, window: 0s }
      - concurrency: { max: 1, queue_timeout: 9999999d }
      - circuit-breaker: { window: 0ms }
      - proxy: {}
`);
  const at = new Map(issues.map((issue) => [issue.path, issue]));
  const expected: [string, number, RegExp][] = [
    ["tiers.free.window", 2, /Invalid window "0ms": a window must be at least 1ms/],
    ["shutdown.grace", 3, /Invalid duration "30d": a wait can be at most 24d/],
    ["routes[0].upstream.timeout", 6, /too long to count in milliseconds/],
    // 0 would cut every body not already in hand.
    ["routes[0].upstream.read_timeout", 6, /Invalid duration "0s": it must be at least 1ms/],
    [
      "routes[0].pipeline[0].token-bucket.rate",
      8,
      /Invalid rate "0\/s": the count must be above 0/,
    ],
    ["routes[0].pipeline[1].sliding-window.limits[1]", 9, /Invalid rate "0.0\/h"/],
    ["routes[0].pipeline[2].sliding-window.window", 10, /a window must be at least 1ms/],
    ["routes[0].pipeline[3].concurrency.queue_timeout", 11, /at most 24d/],
    ["routes[0].pipeline[4].circuit-breaker.window", 12, /a window must be at least 1ms/],
  ];
  for (const [path, line, message] of expected) {
    assert.equal(at.get(path)?.line, line, `${path} in ${JSON.stringify(issues, null, 1)}`);
    assert.match(at.get(path)!.message, message);
  }
  assert.equal(issues.length, expected.length, JSON.stringify(issues, null, 1));
});

Deno.test("a whole ${VAR} is a number where a number is wanted, and keeps its text where a string is", async () => {
  await using config = await tempConfig(`listen: { port: \${PORT} }
admin: { token: \${ADMIN_TOKEN} }
tiers:
  free: { limit: 10, window: 1m }
keys:
  - { key: \${API_KEY}, tier: free }
routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
`);
  const env: Record<string, string> = { PORT: "9090", ADMIN_TOKEN: "20240611", API_KEY: "0012345" };
  const loaded = await loadConfig(config.file, {
    plugins: BUILTIN_PLUGINS,
    env: (name) => env[name],
  });
  assert.equal(loaded.config.listen.port, 9090);
  assert.equal(loaded.config.admin.token, "20240611");
  assert.ok(loaded.keys.has(await sha256Hex("0012345")), "the key keeps its leading zeros");
});

Deno.test("a whole ${VAR} keeps its text in a plugin's options where a string is wanted", async () => {
  await using config = await tempConfig(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - identify: { from: [jwt:sub], jwt: { secret: \${JWT_SECRET}, audience: \${JWT_AUD} } }
      - plugin: ${new URL("../plugins/examples/request_id.ts", import.meta.url).pathname}
        with: { header: \${HEADER} }
      - token-bucket: { rate: 10/s, burst: \${BURST} }
      - proxy: {}
`);
  const secret = "1234567890123456789012345678901234567890";
  const env: Record<string, string> = {
    JWT_SECRET: secret,
    JWT_AUD: "2024",
    HEADER: "123",
    BURST: "20",
  };
  const loaded = await loadConfig(config.file, {
    plugins: BUILTIN_PLUGINS,
    env: (name) => env[name],
  });
  const [identify, requestId, bucket] = loaded.routes[0]!.pipeline;
  const jwt = (identify!.options as { jwt: { secret: string; audience: string[] } }).jwt;
  assert.equal(jwt.secret, secret, "40 digits kept as text, not rounded as a number");
  assert.deepEqual(jwt.audience, ["2024"]);
  assert.equal((requestId!.options as { header: string }).header, "123");
  assert.equal((bucket!.options as { burst: number }).burst, 20, "a number where one is wanted");
});

Deno.test("a ${VAR} in a key is an error at its line, in the words written", async () => {
  const issues = await issuesOf(`tiers:
  \${TIER:-free}: { limit: 10, window: 1m }
routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
`);
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.equal(issues[0]!.line, 2);
  assert.equal(issues[0]!.path, "tiers.${TIER:-free}");
  assert.match(issues[0]!.message, /placeholders go in values, never in keys/);
  assert.doesNotMatch(JSON.stringify(issues), /__sluice_var/);
});

Deno.test("a file of only --- or without routes is an error, not a gateway that answers 404 to all", async () => {
  const dashes = await issuesOf("---\n");
  assert.match(dashes[0]!.message, /The file is empty/);
  for (const text of ["routes:\n", "routes: []\n", "listen: { port: 8080 }\n"]) {
    const issues = await issuesOf(text);
    assert.equal(issues.length, 1, `${text}: ${JSON.stringify(issues)}`);
    assert.equal(issues[0]!.path, "routes");
    assert.match(issues[0]!.message, /at least one route/);
  }
});

Deno.test("YAML merge keys (<<: *base) apply, with errors in what they build reported", async () => {
  await using config = await tempConfig(`tiers:
  free: &base { limit: 10, window: 1m }
  paid: { <<: *base, limit: 100 }
routes:
  - name: a
    upstream: &up { url: http://127.0.0.1:9001, timeout: 5s }
    pipeline: [ { proxy: {} } ]
  - name: b
    upstream: { <<: *up, timeout: 2s }
    pipeline: [ { proxy: {} } ]
`);
  const loaded = await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: () => undefined });
  assert.deepEqual(loaded.config.tiers.paid, { limit: 100, window: 60_000 });
  assert.equal(loaded.routes[1]!.upstream!.url, "http://127.0.0.1:9001");
  assert.equal(loaded.routes[1]!.upstream!.timeout, 2_000);
  const issues = await issuesOf(`tiers:
  free: &base { limit: 10, window: 1m }
  paid: { <<: *base, limit: -5 }
routes:
  - name: a
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
`);
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.equal(issues[0]!.path, "tiers.paid.limit");
  assert.equal(issues[0]!.line, 3);
});

Deno.test("a route's match.host written with a port is an error (the port is never matched)", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    match: { host: "api.example.com:8080" }
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
  - name: v6
    match: { host: "[::1]:80" }
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
  - name: fine
    match: { host: "[::1]" }
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
`);
  assert.deepEqual(issues.map((issue) => [issue.path, issue.line]), [
    ["routes[0].match.host", 3],
    ["routes[1].match.host", 7],
  ]);
  assert.match(issues[0]!.message, /write "api.example.com", and every port of it matches/);
});

Deno.test("a whole ${VAR} a merge key brings in keeps its text where a string is wanted", async () => {
  await using config = await tempConfig(`routes:
  - &base
    name: a
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - token-bucket: { rate: 5/s, name: \${NAME} }
      - proxy: {}
  - <<: *base
    name: b
`);
  const loaded = await loadConfig(config.file, {
    plugins: BUILTIN_PLUGINS,
    env: (name) => name === "NAME" ? "2024" : undefined,
  });
  for (const route of loaded.routes) {
    assert.equal((route.pipeline[0]!.options as { name: string }).name, "2024", route.name);
  }
});

Deno.test("a second proxy step is an error at its line", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - proxy: {}
      - token-bucket: { rate: 5/s }
      - proxy: {}
`);
  assert.deepEqual(issues.map((issue) => [issue.path, issue.line]), [["routes[0].pipeline[2]", 7]]);
  assert.match(issues[0]!.message, /one proxy step/);
});

Deno.test("a key naming an unknown tier is reported in the same run as errors elsewhere in the file", async () => {
  const issues = await issuesOf(`listen: { port: 70000 }
tiers:
  free: { limit: 10, window: 1m }
keys:
  - { key: abc, tier: gold }
${A_ROUTE}`);
  assert.deepEqual(issues.map((issue) => [issue.path, issue.line]), [
    ["listen.port", 1],
    ["keys[0].tier", 5],
  ]);
  assert.match(issues[1]!.message, /Unknown tier "gold": the tiers are free/);
});

Deno.test("keys files and plugins are found in folders whose names hold a space, # or ?", async () => {
  await using config = await tempConfig(`tiers:
  free: { limit: 10, window: 1m }
keys:
  - file: "./my keys #1?/keys.yaml"
routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - plugin: "./my keys #1?/noop.ts"
      - proxy: {}
`);
  const folder = `${config.dir}/my keys #1?`;
  await Deno.mkdir(folder);
  await Deno.writeTextFile(`${folder}/keys.yaml`, "- { key: k1, tier: free }\n");
  await Deno.writeTextFile(
    `${folder}/noop.ts`,
    `import { definePlugin } from "${new URL("../mod.ts", import.meta.url).href}";
import { z } from "zod";
export default definePlugin({ name: "noop", options: z.object({}), create: () => (_ctx, next) => next() });
`,
  );
  const loaded = await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: () => undefined });
  assert.ok(loaded.keys.has(await sha256Hex("k1")));
  assert.deepEqual(loaded.routes[0]!.pipeline.map((entry) => entry.name), ["noop", "proxy"]);
  assert.deepEqual([...loaded.pluginFiles].sort(), [`${folder}/keys.yaml`, `${folder}/noop.ts`]);
});

Deno.test("a tier or policy name outside printable ASCII is an error at its line (the RateLimit headers could not carry it)", async () => {
  const issues = await issuesOf(`tiers:
  "basic–plan": { limit: 5, window: 1m }
  fine: { limit: 5, window: 1m }
routes:
  - name: api
    match: { path_prefix: / }
    upstream: { url: "http://127.0.0.1:9" }
    pipeline:
      - identify: {}
      - sliding-window: { limit: 2, window: 1m, name: "prämie" }
      - token-bucket: { rate: 5/s, name: "bucket\u0007" }
      - proxy: {}
`);
  assert.deepEqual(issues.map((issue) => [issue.path, issue.line]), [
    ["tiers.basic–plan", 2],
    ["routes[0].pipeline[1].sliding-window.name", 10],
    ["routes[0].pipeline[2].token-bucket.name", 11],
  ]);
  for (const issue of issues) assert.match(issue.message, /printable ASCII/);
});

Deno.test("a Redis URL the store could not read at start is an error at its line, without its password", async () => {
  const issues = await issuesOf(`store:
  url: "redis://:p%zzword@127.0.0.1:6379"
  nodes: ["redis://[::1]:7000", "redis://127.0.0.1:7001/x"]
${A_ROUTE}`);
  assert.deepEqual(issues.map((issue) => [issue.path, issue.line]), [
    ["store.url", 2],
    ["store.nodes[1]", 3],
  ]);
  assert.match(
    issues[0]!.message,
    /password is not valid percent-encoding \(write a % in it as %25\)/,
  );
  assert.ok(!issues[0]!.message.includes("zzword"), issues[0]!.message);
  assert.match(issues[1]!.message, /database "x" is not a number/);
});

Deno.test("cluster nodes that mix redis:// and rediss:// are an error at the odd one's line", async () => {
  const issues = await issuesOf(`store:
  nodes:
    - redis://127.0.0.1:7000
    - REDISS://127.0.0.1:7001
${A_ROUTE}`);
  assert.deepEqual(issues.map((issue) => [issue.path, issue.line]), [["store.nodes[1]", 4]]);
  assert.match(issues[0]!.message, /all be redis:\/\/ or all be rediss:\/\//);
});

Deno.test("an upstream URL with a user or password is an error that does not repeat them", async () => {
  const issues = await issuesOf(`routes:
  - name: api
    upstream: { url: "http://admin:Sup3rSecret@backend:9001" }
  - name: pool
    upstream: { targets: ["http://a:1", "https://b:Other5ecret@b:443"] }
  - name: odd
    upstream: { url: "htp://c:Third5ecret@c" }
`);
  assert.deepEqual(issues.map((issue) => [issue.path, issue.line]), [
    ["routes[0].upstream.url", 3],
    ["routes[1].upstream.targets[1]", 5],
    ["routes[2].upstream.url", 7],
  ]);
  for (const issue of issues) {
    assert.match(issue.message, /cannot hold a user or password/);
    assert.ok(!/Sup3rSecret|Other5ecret|Third5ecret/.test(issue.message), issue.message);
  }
});

Deno.test("a redis_hash with the memory store is an error at its line; with REDIS_URL it loads", async () => {
  const yaml = `keys:
  - { key: k1, tier: free }
  - { redis_hash: sluice:keys }
tiers:
  free: { limit: 1, window: 1m }
routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { identify: {} }, { tier: {} }, { proxy: {} } ]
`;
  const issues = await issuesOf(yaml);
  assert.equal(issues.length, 1);
  assert.equal(issues[0]!.path, "keys[1].redis_hash");
  assert.equal(issues[0]!.line, 3);
  assert.match(issues[0]!.message, /needs a Redis store/);
  await using config = await tempConfig(yaml);
  const env: Record<string, string> = { REDIS_URL: "redis://127.0.0.1:6379" };
  await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: (name) => env[name] });
});

/** The issues of a config whose `keys` are `keys` (tiers free and paid), with `keys.yaml` beside it. */
async function keysIssues(keys: string, keysFile: string): Promise<ConfigIssue[]> {
  await using config = await tempConfig(
    `keys:
${keys}
tiers:
  free: { limit: 1, window: 1m }
  paid: { limit: 9, window: 1m }
routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
`,
  );
  await Deno.writeTextFile(`${config.dir}/keys.yaml`, keysFile);
  const error = await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: () => undefined })
    .catch((error) => error);
  assert.ok(error instanceof ConfigError, String(error));
  return error.issues;
}

Deno.test("a key listed twice with two tiers is an error, in the config and in a keys file", async () => {
  const issues = await keysIssues(
    "  - { key: k1, tier: free }\n  - { key: k1, tier: paid }\n  - { file: ./keys.yaml }",
    `- { key: k2, tier: free }\n- { key: k1, tier: free }\n`,
  );
  assert.deepEqual(issues.map((issue) => [issue.path, issue.line]), [
    ["keys[1].key", 3],
    ["keys[2].file", 4],
  ]);
  assert.match(issues[0]!.message, /listed before with tier "free"/);
  assert.match(issues[1]!.message, /keys\.yaml:2: .*listed before with tier "paid"/);
});

Deno.test("a bare number as a key in a keys file is an error that says to quote it", async () => {
  const issues = await keysIssues(
    "  - { file: ./keys.yaml }",
    `- { key: abc, tier: free }\n- { key: 0012345, tier: free }\n`,
  );
  assert.match(issues[0]!.message, /keys\.yaml:2: a key is text: quote it/);
});

Deno.test("kind: memory beside a Redis url is an error at the url (it would count per instance, unsaid)", async () => {
  const routes = `routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline: [ { proxy: {} } ]
`;
  // DESIGN's example, with REDIS_URL set.
  const design = `store:
  kind: memory
  url: \${REDIS_URL:-}
${routes}`;
  const issues = await issuesOf(design, { REDIS_URL: "redis://10.0.0.5:6379" });
  assert.deepEqual(issues.map((issue) => [issue.path, issue.line]), [["store.url", 3]]);
  assert.match(issues[0]!.message, /kind: memory .* remove kind/);
  // Without REDIS_URL the same file is a memory store, as written.
  await using config = await tempConfig(design);
  await loadConfig(config.file, { plugins: BUILTIN_PLUGINS, env: () => undefined });
  // A cluster's seeds under kind: redis would be ignored the same way.
  const seeds = await issuesOf(`store: { kind: redis, nodes: [redis://10.0.0.5:7000] }\n${routes}`);
  assert.deepEqual(seeds.map((issue) => issue.path), ["store.nodes"]);
  assert.match(seeds[0]!.message, /kind: redis-cluster/);
});
