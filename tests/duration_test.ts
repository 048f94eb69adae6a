import assert from "node:assert/strict";
import { parseDuration, parseRate } from "../src/config/duration.ts";

Deno.test("durations parse to milliseconds", () => {
  assert.equal(parseDuration("250ms"), 250);
  assert.equal(parseDuration("10s"), 10_000);
  assert.equal(parseDuration("1m"), 60_000);
  assert.equal(parseDuration("1h"), 3_600_000);
  assert.equal(parseDuration("1d"), 86_400_000);
  assert.equal(parseDuration("1.5s"), 1_500);
});

Deno.test("a bad duration names itself and the forms allowed", () => {
  for (const bad of ["10", "s", "10 sec", "-1s", "1w", ""]) {
    assert.throws(() => parseDuration(bad), (error: Error) => {
      assert.match(error.message, new RegExp(`Invalid duration "${bad}"`));
      assert.match(error.message, /ms, s, m, h or d/);
      return true;
    });
  }
});

Deno.test("rates parse to a count per period", () => {
  assert.deepEqual(parseRate("50/s"), { count: 50, periodMs: 1_000 });
  assert.deepEqual(parseRate("600/m"), { count: 600, periodMs: 60_000 });
  assert.deepEqual(parseRate("1000/h"), { count: 1000, periodMs: 3_600_000 });
  assert.throws(() => parseRate("0/s"), /above 0/);
  assert.throws(() => parseRate("50/x"), /Invalid rate "50\/x"/);
});
