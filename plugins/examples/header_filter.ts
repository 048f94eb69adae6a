/**
 * Example plugin: rejects requests by header. `deny` lists headers whose
 * presence answers 403; `require` lists headers that must be present (400
 * without them); `remove` strips headers before the upstream sees them.
 *
 *   - plugin: ../plugins/examples/header_filter.ts   # relative to the config file (here in config/)
 *     with: { deny: [x-debug], require: [x-tenant], remove: [cookie] }
 */
import { z } from "zod";
import { definePlugin, problem } from "../../mod.ts";

const headerName = z.string().regex(/^[A-Za-z0-9-]+$/, { error: "Expected a header name" });

export default definePlugin({
  name: "header-filter",
  options: z.strictObject({
    deny: z.array(headerName).default([]),
    require: z.array(headerName).default([]),
    remove: z.array(headerName).default([]),
  }),
  create({ deny, require, remove }) {
    return function headerFilter(ctx, next) {
      const headers = ctx.request.headers;
      const denied = deny.find((name) => headers.has(name));
      if (denied) {
        return problem(403, { detail: `The ${denied} header is not allowed on this route` });
      }
      const missing = require.find((name) => !headers.has(name));
      if (missing) {
        return problem(400, { detail: `This route needs the ${missing} header` });
      }
      if (remove.some((name) => headers.has(name))) {
        // Request headers are immutable: a new request carries the change.
        const kept = new Headers(headers);
        for (const name of remove) kept.delete(name);
        ctx.request = new Request(ctx.request, { headers: kept });
      }
      return next();
    };
  },
});
