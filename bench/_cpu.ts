/**
 * CPU time of a server process and its descendants (an nginx master and its
 * worker), read from Linux's /proc, for the CPU cost per request the bench
 * reports beside requests/s. A throughput moves with whatever else the
 * machine runs; the CPU a server spent per request moves much less.
 */

/** Clock ticks per second of /proc's times (`getconf CLK_TCK`; 100 on Linux). */
let ticksPerSecond: number | undefined;

async function clockTicks(): Promise<number> {
  if (ticksPerSecond !== undefined) return ticksPerSecond;
  ticksPerSecond = 100;
  try {
    const output = await new Deno.Command("getconf", { args: ["CLK_TCK"], stdout: "piped" })
      .output();
    const value = Number(new TextDecoder().decode(output.stdout).trim());
    if (output.success && Number.isInteger(value) && value > 0) ticksPerSecond = value;
  } catch {
    // No getconf: keep 100.
  }
  return ticksPerSecond;
}

/**
 * User plus system ticks from one `/proc/<pid>/stat` line. The command name
 * (field 2) is in parentheses and may hold spaces and parentheses, so fields
 * are counted from the last `)`.
 */
export function statTicks(line: string): number {
  const close = line.lastIndexOf(")");
  if (close < 0) throw new Error(`Cannot read /proc stat line: ${line.slice(0, 80)}`);
  // After ")": field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
  const fields = line.slice(close + 2).split(" ");
  const user = Number(fields[11]);
  const system = Number(fields[12]);
  if (!Number.isFinite(user) || !Number.isFinite(system)) {
    throw new Error(`Cannot read utime and stime from /proc stat line: ${line.slice(0, 80)}`);
  }
  return user + system;
}

// Deno reads /proc only with --allow-all, so a shell reads it: the stat line
// of the process and of each descendant, found through every thread's
// `children` file.
const READ_TREE = `queue="$1"
while [ -n "$queue" ]; do
  set -- $queue; pid=$1; shift; queue="$*"
  cat "/proc/$pid/stat" 2>/dev/null || continue
  for file in /proc/"$pid"/task/*/children; do queue="$queue $(cat "$file" 2>/dev/null)"; done
done`;

/**
 * CPU seconds used so far by `pid` (all its threads) and its descendants, or
 * undefined where /proc cannot tell (not Linux, or the process is gone).
 */
export async function cpuSeconds(pid: number): Promise<number | undefined> {
  if (Deno.build.os !== "linux") return undefined;
  const ticks = await clockTicks();
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command("sh", {
      args: ["-c", READ_TREE, "sh", String(pid)],
      stdout: "piped",
      stderr: "null",
    }).output();
  } catch {
    return undefined;
  }
  const lines = new TextDecoder().decode(output.stdout).split("\n").filter((line) => line);
  // The first line is the process itself: without it, it is gone.
  if (lines.length === 0 || !lines[0]!.startsWith(`${pid} (`)) return undefined;
  let total = 0;
  for (const line of lines) total += statTicks(line);
  return total / ticks;
}
