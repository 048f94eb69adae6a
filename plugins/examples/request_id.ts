/**
 * Example plugin: echoes the request id (the client's `X-Request-Id`, or the
 * one the gateway made) in a response header, so a client can quote it.
 *
 *   - plugin: ../plugins/examples/request_id.ts   # relative to the config file (here in config/)
 *     with: { header: x-request-id }
 */
import { z } from "zod";
import { definePlugin } from "../../mod.ts";

export default definePlugin({
  name: "request-id",
  options: z.strictObject({
    header: z.string().regex(/^[A-Za-z0-9-]+$/).default("x-request-id"),
  }),
  create({ header }) {
    return async function requestId(ctx, next) {
      const response = await next();
      response.headers.set(header, ctx.requestId);
      return response;
    };
  },
});
