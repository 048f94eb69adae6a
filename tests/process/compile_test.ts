/**
 * `deno task compile` makes one binary with lua/, config/ and plugins/
 * embedded. Compiling needs Deno's runtime binary (denort), which Deno
 * downloads; where it cannot, set DENORT_BIN to a local denort. Without it
 * this test is ignored, and says so.
 */
import assert from "node:assert/strict";
import { freePort, repoPath, waitFor } from "../_helpers.ts";

const DENORT_BIN = Deno.env.get("DENORT_BIN");
if (!DENORT_BIN) {
  globalThis.addEventListener("unload", () => {
    console.log(
      "1 compile test ignored: DENORT_BIN is not set (deno compile needs a local denort here)",
    );
  });
}

Deno.test({
  name: "the compiled binary checks and serves the embedded default config",
  ignore: !DENORT_BIN,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "sluice-compile-" });
    try {
      const binary = `${dir}/sluice`;
      // The compile task's own flags, writing to the temp directory.
      const task: string = JSON.parse(await Deno.readTextFile(repoPath("deno.json"))).tasks.compile;
      const args = task.replace(/^deno /, "").replace("-o dist/sluice", `-o ${binary}`).split(" ");
      const compile = await new Deno.Command(Deno.execPath(), {
        args,
        cwd: repoPath(""),
        env: { DENORT_BIN: DENORT_BIN! },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(compile.success, new TextDecoder().decode(compile.stderr));
      // Run from an empty directory: the config and Lua scripts must come from inside the binary.
      const check = await new Deno.Command(binary, {
        args: ["--check", `${repoPath("config/gateway.yaml")}`],
        cwd: dir,
      })
        .output();
      assert.equal(check.code, 0, new TextDecoder().decode(check.stderr));
      const port = freePort();
      const child = new Deno.Command(binary, {
        cwd: dir,
        env: { PORT: String(port) },
        stdout: "null",
        stderr: "null",
      }).spawn();
      try {
        const answered = await waitFor(async () => {
          try {
            const response = await fetch(`http://127.0.0.1:${port}/`);
            await response.body?.cancel();
            // No upstream runs on 9001: the gateway itself answers 502.
            return response.status === 502;
          } catch {
            return false;
          }
        }, 15_000);
        assert.ok(answered, "the compiled gateway did not answer");
      } finally {
        child.kill("SIGTERM");
        await child.status;
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
