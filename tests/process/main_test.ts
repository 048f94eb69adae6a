/** main.ts as a user runs it: `--check`, and a bad config at start. */
import assert from "node:assert/strict";
import { delay, freePort, repoPath, startUpstream, tempConfig, waitFor } from "../_helpers.ts";
import { kill, spawnGateway } from "../_process.ts";

async function runMain(args: string[], env: Record<string, string> = {}) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-read", "--allow-env", repoPath("main.ts"), ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

Deno.test("--check on a valid file exits 0", async () => {
  const result = await runMain(["--check", repoPath("config/gateway.yaml")]);
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /gateway\.yaml: ok \(1 route\)/);
});

Deno.test("--check prints every error with its path and line, and exits 1", async () => {
  await using config = await tempConfig(`listen:
  port: 99999
routes:
  - name: api
    upstream: { url: ftp://nowhere, timeout: soon }
    pipeline:
      - identify: { from: [ip], reqired: true }
      - throttle: {}
      - proxy: {}
`);
  const result = await runMain(["--check", config.file]);
  assert.equal(result.code, 1);
  const lines = result.stderr.trim().split("\n");
  const expected = [
    [":2:", "listen.port"],
    [":5:", "routes[0].upstream.url"],
    [":5:", "routes[0].upstream.timeout"],
    [":7:", "routes[0].pipeline[0].identify.reqired"],
    [":8:", "routes[0].pipeline[1].throttle"],
  ];
  for (const [line, path] of expected) {
    assert.ok(
      lines.some((text) => text.includes(`${config.file}${line}`) && text.includes(` ${path}: `)),
      `no error for ${path} at line ${line} in:\n${result.stderr}`,
    );
  }
  assert.match(lines.at(-1)!, /5 errors$/);
});

Deno.test("--check creates each plugin as a start would: what only create() refuses is an error at its line", async () => {
  const cases = [
    {
      steps: "      - identify: {}\n      - sliding-window: { limit: tier }\n      - proxy: {}",
      error: /:8:.* routes\[0\]\.pipeline\[1\]: .*needs a tier step before it/,
    },
    {
      steps: "      - token-bucket: { rate: 10/s, burst: 3, cost: 5 }\n      - proxy: {}\n",
      error: /:7:.* routes\[0\]\.pipeline\[0\]: .*cost 5 is more than the bucket holds/,
    },
  ];
  for (const { steps, error } of cases) {
    await using config = await tempConfig(`tiers:
  free: { limit: 10, window: 1m }
routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
${steps}
`);
    const result = await runMain(["--check", config.file]);
    assert.equal(result.code, 1, result.stdout);
    assert.match(result.stderr, error);
    assert.ok(result.stderr.startsWith(config.file), result.stderr);
  }
});

Deno.test("--check names every plugin that refuses to be created, not only the first", async () => {
  await using config = await tempConfig(`tiers:
  free: { limit: 10, window: 1m }
routes:
  - name: a
    match: { path_prefix: /a }
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - sliding-window: { limit: 5000, window: 1m, cost: 1001 }
      - token-bucket: { rate: 5/s, burst: 5, cost: 6 }
      - proxy: {}
  - name: b
    match: { path_prefix: /b }
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - identify: {}
      - tier: { default: nosuch }
      - proxy: {}
`);
  const result = await runMain(["--check", config.file]);
  assert.equal(result.code, 1, result.stdout);
  assert.match(result.stderr, /:8:.* routes\[0\]\.pipeline\[0\]: .*cost 1001 is above 1000/);
  assert.match(
    result.stderr,
    /:9:.* routes\[0\]\.pipeline\[1\]: .*cost 6 is more than the bucket holds/,
  );
  assert.match(result.stderr, /:16:.* routes\[1\]\.pipeline\[1\]: .*tier "nosuch" is not defined/);
  assert.match(result.stderr, /3 errors/);
});

Deno.test("--check prints the warnings a start gives, and still exits 0", async () => {
  await using config = await tempConfig(`admin: { hostname: 0.0.0.0, port: 9090 }
routes:
  - name: api
    upstream: { url: http://127.0.0.1:9001 }
    pipeline:
      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: 5, window: 1m }
      - proxy: {}
`);
  const result = await runMain(["--check", config.file], { ADMIN_TOKEN: "" });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /ok \(1 route\)/);
  assert.match(
    result.stderr,
    /warning: API keys are counted per key, but no tier step checks them/,
  );
  assert.match(result.stderr, /warning: the admin API listens beyond this machine without a token/);
  // A token from the environment answers the second.
  const tokened = await runMain(["--check", config.file], { ADMIN_TOKEN: "s3cret" });
  assert.doesNotMatch(tokened.stderr, /admin API/);
});

Deno.test("--check of a missing file says it cannot read it", async () => {
  const result = await runMain(["--check", "/nonexistent/gateway.yaml"]);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /Cannot read the file/);
});

Deno.test("starting with a bad config logs the errors as JSON and exits 1", async () => {
  await using config = await tempConfig(`routes:
  - name: api
    pipeline: [ { nope: {} } ]
`);
  const result = await runMain(["--config", config.file]);
  assert.equal(result.code, 1);
  const line = JSON.parse(result.stdout.trim().split("\n").at(-1)!);
  assert.equal(line.level, "error");
  assert.match(line.errors[0], /Unknown plugin "nope"/);
});

Deno.test("an unknown argument is a usage error", async () => {
  const result = await runMain(["--frobnicate"]);
  assert.equal(result.code, 2);
  assert.match(result.stderr, /Unknown argument "--frobnicate"/);
  assert.match(result.stderr, /Usage:/);
});

Deno.test("a checkout under a folder whose name has a space starts on its default config", async () => {
  const root = await Deno.makeTempDir({ prefix: "sluice-space-" });
  const checkout = `${root}/My Projects/sluice`;
  await Deno.mkdir(checkout, { recursive: true });
  try {
    for (
      const path of [
        "main.ts",
        "mod.ts",
        "deno.json",
        "deno.lock",
        "src",
        "lua",
        "config",
        "plugins",
      ]
    ) {
      const copy = new Deno.Command("cp", { args: ["-r", repoPath(path), `${checkout}/${path}`] });
      assert.ok((await copy.output()).success, `copying ${path}`);
    }
    const adminPort = freePort();
    // Run from elsewhere, with no --config: the default config is found beside main.ts.
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-net", "--allow-read", "--allow-env", `${checkout}/main.ts`],
      cwd: root,
      env: {
        NO_COLOR: "1",
        PORT: String(freePort()),
        ADMIN_PORT: String(adminPort),
        REDIS_URL: "",
      },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const ready = await waitFor(async () => {
      try {
        return (await fetch(`http://127.0.0.1:${adminPort}/health`)).status === 200;
      } catch {
        return false;
      }
    }, 10_000);
    try {
      child.kill("SIGTERM");
    } catch {
      // It had already stopped (and says why on stderr).
    }
    const output = await child.output();
    const stdout = new TextDecoder().decode(output.stdout);
    assert.ok(ready, new TextDecoder().decode(output.stderr) + stdout);
    assert.match(stdout, /"config":"[^"]*My Projects\/sluice\/config\/gateway\.yaml"/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("--check and a start refuse a PORT, REDIS_URL or LOG_LEVEL that cannot be used, by name", async () => {
  const env = { PORT: "0x4e3b", REDIS_URL: "garbage", LOG_LEVEL: "toString" };
  await using config = await tempConfig(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:9 }
    pipeline: [ { proxy: {} } ]
`);
  const checked = await runMain(["--check", config.file], env);
  assert.equal(checked.code, 1);
  assert.match(checked.stderr, /^PORT="0x4e3b": a port is a whole number from 0 to 65535$/m);
  assert.match(checked.stderr, /^REDIS_URL: Invalid Redis URL "garbage"/m);
  assert.match(checked.stderr, /^LOG_LEVEL="toString": write debug, info, warn or error$/m);
  assert.match(checked.stderr, /ok, but the environment has 3 errors$/m);
  const started = await runMain(["--config", config.file], { PORT: "80800" });
  assert.equal(started.code, 1);
  assert.match(started.stdout, /cannot start: the environment has errors.*PORT=\\"80800\\"/);
  const fine = await runMain(["--check", config.file], { PORT: "8081", LOG_LEVEL: "WARN" });
  assert.equal(fine.code, 0, fine.stderr);
  // REDIS_URL counts only where the store would connect to it.
  await config.write(`store: { kind: memory }\n${await Deno.readTextFile(config.file)}`);
  const memory = await runMain(["--check", config.file], { REDIS_URL: "redis-sentinel://s:26379" });
  assert.equal(memory.code, 0, memory.stderr);
});

const SCRIPT = ["/usr/bin/script", "/bin/script"].find((path) => {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
});
if (!SCRIPT) {
  globalThis.addEventListener("unload", () => {
    console.log("1 terminal test ignored: script (util-linux) is not installed");
  });
}

Deno.test({
  name: "in a terminal, a start with --allow-read of its own folders asks for no permission",
  ignore: !SCRIPT || Deno.build.os !== "linux",
  async fn() {
    // As `deno task start` runs it (--allow-read=.), but with the config in a folder of its own:
    // the watcher must not look at the folders above them (/, /tmp), which would stop the
    // gateway at Deno's permission prompt.
    await using config = await tempConfig(`listen: { port: ${freePort()}, hostname: 127.0.0.1 }
admin: { port: ${freePort()}, hostname: 127.0.0.1 }
routes:
  - name: api
    upstream: { url: "http://127.0.0.1:9" }
    pipeline: [ { proxy: {} } ]
`);
    // The shell says its PID, which timeout (then the gateway's parent) takes over.
    const command = [
      "echo pid=$$; exec timeout 60",
      Deno.execPath(),
      "run --allow-net --allow-env",
      `--allow-read=${repoPath("")},${config.dir}`,
      repoPath("main.ts"),
      "--config",
      config.file,
    ].join(" ");
    const child = new Deno.Command(SCRIPT!, {
      args: ["-qec", command, "/dev/null"],
      env: { NO_COLOR: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let output = "";
    const decoder = new TextDecoder();
    const reader = child.stdout.getReader();
    const deadline = Date.now() + 20_000;
    try {
      while (!/gateway started|Deno requests|error/.test(output) && Date.now() < deadline) {
        const { value, done } = await reader.read();
        if (done) break;
        output += decoder.decode(value, { stream: true });
      }
    } finally {
      // timeout passes SIGTERM on to the gateway.
      const pid = /pid=(\d+)/.exec(output)?.[1];
      if (pid) {
        try {
          Deno.kill(Number(pid), "SIGTERM");
        } catch {
          // Already gone.
        }
      }
      reader.releaseLock();
      await child.stdin.close().catch(() => {});
      await child.stdout.cancel().catch(() => {});
      await child.stderr.cancel().catch(() => {});
      await child.status;
    }
    assert.doesNotMatch(output, /Deno requests/, output);
    assert.match(output, /"msg":"gateway started"/, output);
  },
});

Deno.test("out of file descriptors, the gateway stays up and listens again once they are free", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using config = await tempConfig(`admin: { port: \${ADMIN_PORT} }
routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline: [ { proxy: {} } ]
`);
  const gw = await spawnGateway(config.file, { fdLimit: 64 });
  const held: Deno.Conn[] = [];
  try {
    // A flood of connections held open: the gateway runs out of descriptors to accept them.
    const port = Number(new URL(gw.url).port);
    for (let i = 0; i < 200; i++) {
      try {
        held.push(await Deno.connect({ hostname: "127.0.0.1", port }));
      } catch {
        break; // refused: the listener has stopped
      }
    }
    await delay(200);
    for (const conn of held.splice(0)) conn.close();
    const serves = await waitFor(async () => {
      try {
        const response = await fetch(`${gw.url}/x`);
        await response.body?.cancel();
        return response.status === 200;
      } catch {
        return false;
      }
    }, 10_000);
    assert.ok(serves, "the gateway serves again");
    kill(gw.child, "SIGTERM");
    const { code, lines } = await gw.exited;
    assert.equal(code, 0);
    const msgs = lines.map((line) => JSON.parse(line).msg);
    assert.ok(msgs.includes("the listener stopped; listening again in 1 s"), msgs.join("\n"));
    assert.ok(msgs.includes("listening again"));
  } finally {
    for (const conn of held) conn.close();
    kill(gw.child);
  }
});
