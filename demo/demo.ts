/**
 * `deno task demo`: the demo upstream and the gateway, both started, with the
 * curl lines that show them working. Ctrl-C stops both.
 */
import { Gateway } from "../src/gateway.ts";
import { Logger, parseLogLevel } from "../src/log.ts";
import { startDemoUpstream } from "./upstream.ts";

const upstreamPort = Number(Deno.env.get("DEMO_UPSTREAM_PORT") ?? 9001);
const upstream = startDemoUpstream(upstreamPort);
const configFile = decodeURIComponent(new URL("../config/demo.yaml", import.meta.url).pathname);
const gateway = await Gateway.start({
  configFile,
  logger: new Logger(parseLogLevel(Deno.env.get("LOG_LEVEL") ?? "warn")),
});
const base = `http://127.0.0.1:${gateway.addr.port}`;
const admin = `http://127.0.0.1:${gateway.adminAddr.port}`;
console.log(`sluice demo
  gateway  ${base}  (config/demo.yaml, watched: edit it and see the change)
  admin    ${admin}
  upstream http://127.0.0.1:${upstreamPort}

Try:
  curl -i ${base}/hello
      # 200 from the upstream, with RateLimit-Policy: "free";q=5;w=60 and RateLimit headers
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w "%{http_code} " ${base}/hello; done; echo
      # the free tier allows 5 a minute: past the 5th request, 429
  curl -i ${base}/hello
      # 429 application/problem+json with Retry-After
  curl -i -H 'x-api-key: demo-paid-key' ${base}/hello
      # the paid tier: 100 a minute
  curl -i ${base}/private/report
      # 401 problem+json: this route needs a key
  curl -s ${admin}/metrics | grep -E 'sluice_(requests|limit_decisions)_total'
  curl -s ${admin}/status

Ctrl-C stops both.`);

const stop = async () => {
  await gateway.shutdown(1_000);
  await upstream.shutdown();
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
