/** The fast counter and histogram render exactly as prom-client's own do, for the same values. */
import assert from "node:assert/strict";
import client from "prom-client";
import { FastCounter, FastHistogram } from "../src/fast_metrics.ts";

const BUCKETS = [0.001, 0.01, 0.1, 1];

Deno.test("a fast counter and histogram render as prom-client's, series by series", async () => {
  const theirs = new client.Registry();
  const ours = new client.Registry();
  const counter = new client.Counter({
    name: "t_total",
    help: "A counter.",
    labelNames: ["route", "outcome"],
    registers: [theirs],
  });
  const histogram = new client.Histogram({
    name: "t_seconds",
    help: "A histogram.",
    labelNames: ["route"],
    buckets: BUCKETS,
    registers: [theirs],
  });
  const plain = new client.Histogram({
    name: "t_plain_seconds",
    help: "No labels.",
    buckets: BUCKETS,
    registers: [theirs],
  });
  const fastCounter = new FastCounter({
    name: "t_total",
    help: "A counter.",
    labelNames: ["route", "outcome"],
  });
  const fastHistogram = new FastHistogram({
    name: "t_seconds",
    help: "A histogram.",
    labelNames: ["route"],
    buckets: BUCKETS,
  });
  const fastPlain = new FastHistogram({
    name: "t_plain_seconds",
    help: "No labels.",
    buckets: BUCKETS,
  });
  for (const metric of [fastCounter, fastHistogram, fastPlain]) {
    ours.registerMetric(metric as unknown as client.Metric);
  }
  // Before anything is counted: a series without labels shows zeros, one
  // asked for by labels() but never used shows nothing.
  counter.labels("api", "unused");
  fastCounter.labels("api", "unused");
  histogram.labels({ route: "unused" });
  fastHistogram.labels({ route: "unused" });
  assert.equal(await ours.metrics(), await theirs.metrics());
  const values = [0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.7, 1, 3, 42];
  for (const [i, value] of values.entries()) {
    const route = i % 2 ? "api" : "other";
    counter.labels(route, "proxied").inc();
    fastCounter.labels(route, "proxied").inc();
    counter.inc({ route, outcome: "limited" }, 2);
    fastCounter.inc({ route, outcome: "limited" }, 2);
    histogram.labels({ route }).observe(value);
    fastHistogram.labels({ route }).observe(value);
    plain.observe(value);
    fastPlain.observe(value);
  }
  assert.equal(await ours.metrics(), await theirs.metrics());
  assert.throws(() => fastCounter.labels("api"), /label "outcome" has no value/);
  assert.throws(() => fastCounter.labels("api", "x").inc(-1), /only goes up/);
});
