/**
 * `deno task demo`: the demo upstream and the gateway, both started, with the
 * curl lines that show them working. Ctrl-C stops both.
 */
import { Gateway } from "../src/gateway.ts";
import { Logger, parseLogLevel } from "../src/log.ts";
import { startDemoUpstream } from "./upstream.ts";

const upstreamPort = Number(Deno.env.get("DEMO_UPSTREAM_PORT") ?? 9001);
const upstream = startDemoUpstream(upstreamPort);
const configFile = new URL("../config/demo.yaml", import.meta.url).pathname;
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
  curl -i ${base}/hello                                  # 200 from the upstream via the gateway
  curl -i ${base}/private/report                         # 401 problem+json: this route needs a key
  curl -i -H 'x-api-key: demo-key' ${base}/private/report  # 200 with the key
  curl -s ${admin}/status                                # routes, pipelines, config version
  curl -s ${admin}/metrics | grep sluice_requests_total  # requests by route and outcome

Ctrl-C stops both.`);

const stop = async () => {
  await gateway.shutdown(1_000);
  await upstream.shutdown();
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
