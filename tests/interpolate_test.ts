import assert from "node:assert/strict";
import { interpolate, InterpolationError } from "../src/config/interpolate.ts";

const env = (values: Record<string, string>) => (name: string) => values[name];

Deno.test("${VAR} is replaced by the variable", () => {
  assert.equal(interpolate("redis://${HOST}:6379", env({ HOST: "cache" })), "redis://cache:6379");
});

Deno.test("${VAR:-default} falls back when the variable is unset or empty", () => {
  assert.equal(interpolate("${PORT:-8080}", env({})), "8080");
  assert.equal(interpolate("${PORT:-8080}", env({ PORT: "" })), "8080");
  assert.equal(interpolate("${PORT:-8080}", env({ PORT: "9000" })), "9000");
  assert.equal(interpolate("${TOKEN:-}", env({})), "");
});

Deno.test("an unset variable without a default is an error naming it", () => {
  assert.throws(() => interpolate("${MISSING}", env({})), (error: unknown) => {
    assert.ok(error instanceof InterpolationError);
    assert.match(error.message, /MISSING is not set/);
    return true;
  });
});

Deno.test("text without placeholders is left alone", () => {
  assert.equal(interpolate("$HOME and {x}", env({ HOME: "/root" })), "$HOME and {x}");
});
