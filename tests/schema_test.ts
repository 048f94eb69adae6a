import assert from "node:assert/strict";
import { schemaText } from "../scripts/gen_schema.ts";

Deno.test("config/schema.json is generated from the current validator (run `deno task schema`)", async () => {
  const committed = await Deno.readTextFile(new URL("../config/schema.json", import.meta.url));
  assert.equal(committed, schemaText(), "config/schema.json is stale: run `deno task schema`");
});

Deno.test("the JSON schema describes each built-in plugin's options", () => {
  const schema = JSON.parse(schemaText());
  const entries = schema.properties.routes.items.properties.pipeline.items.anyOf;
  const names = entries.map((entry: { required: string[] }) => entry.required[0]);
  assert.ok(names.includes("identify"));
  assert.ok(names.includes("proxy"));
  assert.ok(names.includes("plugin"));
});
