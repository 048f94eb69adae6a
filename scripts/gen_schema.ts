/** Writes config/schema.json from the config's zod schema: `deno task schema`. */
import { configJsonSchema } from "../src/config/schema.ts";
import { BUILTIN_PLUGINS } from "../src/plugins/mod.ts";

/** The text of config/schema.json. */
export function schemaText(): string {
  return JSON.stringify(configJsonSchema(BUILTIN_PLUGINS), null, 2) + "\n";
}

if (import.meta.main) {
  const target = new URL("../config/schema.json", import.meta.url);
  await Deno.writeTextFile(target, schemaText());
  console.log(`wrote ${target.pathname}`);
}
