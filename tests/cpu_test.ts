/** The CPU time per request the bench reports (bench/_cpu.ts). */
import assert from "node:assert/strict";
import { cpuSeconds, statTicks } from "../bench/_cpu.ts";

Deno.test("statTicks adds utime and stime, counting fields after a command name with spaces and parentheses", () => {
  const line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 120 0 0 0 " +
    "731 269 0 0 20 0 5 0 3452292 3133440 394 18446744073709551615";
  assert.equal(statTicks(line), 1000);
  assert.throws(() => statTicks("no parentheses here"), /Cannot read/);
});

Deno.test({
  name: "cpuSeconds counts the CPU of a process's descendants (an nginx master and its worker)",
  ignore: Deno.build.os !== "linux",
  async fn() {
    // An idle shell whose child works until it has used 0.4 s of CPU, says so, and waits.
    const busy = `const ticks = () => {
        const stat = Deno.readTextFileSync("/proc/self/stat");
        const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        return Number(fields[11]) + Number(fields[12]);
      };
      while (ticks() < 40) for (let i = 0; i < 1e6; i++);
      console.log("busy");
      await new Promise((resolve) => setTimeout(resolve, 30_000));`;
    const shell = new Deno.Command("sh", {
      args: ["-c", `"$0" eval "$1" & wait`, Deno.execPath(), busy],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    try {
      const line = await shell.stdout.pipeThrough(new TextDecoderStream()).getReader().read();
      assert.equal(line.value?.trim(), "busy");
      const seconds = await cpuSeconds(shell.pid);
      assert.ok(seconds !== undefined);
      assert.ok(seconds >= 0.4, `the shell and its busy child used ${seconds.toFixed(2)} s`);
      assert.equal(await cpuSeconds(2 ** 22 + 12345), undefined, "a process that does not exist");
    } finally {
      // Ending the child ends the shell's wait, and with it the shell.
      await new Deno.Command("pkill", { args: ["-P", String(shell.pid)] }).output();
      await shell.status;
    }
  },
});
