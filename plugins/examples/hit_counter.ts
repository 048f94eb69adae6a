/**
 * Example of state that survives a hot swap: counts the route's requests and
 * reports the count in a response header. The count is kept across reloads
 * while this entry's options stay the same (`ctx.keep`).
 *
 *   - plugin: ../plugins/examples/hit_counter.ts   # relative to the config file (here in config/)
 *     with: { header: x-hits }
 */
import { z } from "zod";
import { definePlugin } from "../../mod.ts";

export default definePlugin({
  name: "hit-counter",
  options: z.strictObject({
    header: z.string().regex(/^[A-Za-z0-9-]+$/).default("x-hits"),
  }),
  create({ header }, ctx) {
    const state = ctx.keep(() => ({ hits: 0 }));
    return async function hitCounter(_ctx, next) {
      const hits = ++state.hits;
      const response = await next();
      response.headers.set(header, String(hits));
      return response;
    };
  },
});
