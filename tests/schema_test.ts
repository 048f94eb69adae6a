import assert from "node:assert/strict";
import { Ajv2020 } from "ajv/dist/2020.js";
import { parse } from "yaml";
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

Deno.test("every shipped config passes config/schema.json, as an editor checks it (a whole ${VAR} where a number goes, too)", async () => {
  const schema = JSON.parse(
    await Deno.readTextFile(new URL("../config/schema.json", import.meta.url)),
  );
  const ajv = new Ajv2020({
    strict: false,
    allErrors: true,
    validateFormats: false,
    logger: false,
  });
  const validate = ajv.compile(schema);
  const dir = new URL("../config/", import.meta.url);
  let checked = 0;
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.name.endsWith(".yaml")) continue;
    const data = parse(await Deno.readTextFile(new URL(entry.name, dir)));
    assert.ok(validate(data), `${entry.name}: ${JSON.stringify(validate.errors, null, 1)}`);
    checked++;
  }
  assert.ok(checked >= 2, `only ${checked} configs found`);
  // A whole placeholder passes wherever the loader takes one; anything else is still checked.
  const route = (upstream: Record<string, unknown>, step?: Record<string, unknown>) => ({
    routes: [{ name: "api", upstream, pipeline: [...(step ? [step] : []), { proxy: {} }] }],
  });
  const url = "http://127.0.0.1:9001";
  assert.ok(validate(route({ url })), JSON.stringify(validate.errors));
  assert.ok(validate({ ...route({ url, timeout: "${T:-5s}" }), store: { on_failure: "${F}" } }));
  assert.ok(validate(route({ url }, { "token-bucket": { rate: "${RATE:-5/s}" } })));
  assert.equal(validate({ ...route({ url }), listen: { port: "eighty" } }), false);
  assert.equal(validate({ ...route({ url }), listen: { port: "${PORT:-8080}x" } }), false);
  assert.equal(validate(route({ url, timeout: "soon" })), false);
  assert.equal(validate({ ...route({ url }), store: { on_failure: "panic" } }), false);
});
