/** The JSON-lines logger (src/log.ts). */
import assert from "node:assert/strict";
import { Logger } from "../src/log.ts";

function capture(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  return { logger: new Logger("debug", { sink: (line) => lines.push(line) }), lines };
}

Deno.test("a field JSON cannot hold (a BigInt, a cycle) is named so and the line still goes out; the call never throws", () => {
  const { logger, lines } = capture();
  const cycle: Record<string, unknown> = {};
  cycle.self = cycle;
  logger.error("plugin failed", { route: "api", error: { n: 10n } });
  logger.warn("odd", { cycle });
  assert.equal(lines.length, 2);
  const [first, second] = lines.map((line) => JSON.parse(line));
  assert.equal(first.msg, "plugin failed");
  assert.equal(first.level, "error");
  assert.equal(first.route, "api", "the other fields are kept");
  assert.equal(first.error, "[unserializable]");
  assert.equal(second.msg, "odd");
  assert.equal(second.cycle, "[unserializable]");
});

Deno.test("a field cannot pass for the line's time, level or message", () => {
  const { logger, lines } = capture();
  logger.error("real", { level: "debug", msg: "fine", time: "x", extra: 1 });
  const line = JSON.parse(lines[0]!);
  assert.equal(line.level, "error");
  assert.equal(line.msg, "real");
  assert.notEqual(line.time, "x");
  assert.equal(line.extra, 1);
});
