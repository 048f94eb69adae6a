/** One target's circuit breaker (src/breaker.ts), on a clock the test moves. */
import assert from "node:assert/strict";
import { Breaker } from "../src/breaker.ts";

const options = {
  failureRatio: 0.5,
  minRequests: 2,
  windowMs: 10_000,
  openForMs: 100,
  probes: 1,
  failureStatuses: new Set([500]),
};

Deno.test("a request from before the breaker half-opened is no probe: its end neither frees a probe nor closes it", () => {
  const breaker = new Breaker(options);
  assert.equal(breaker.acquire(0), true); // a slow request, started while closed
  breaker.acquire(1);
  breaker.record(false, 1, 1);
  breaker.acquire(2);
  breaker.record(false, 2, 2);
  assert.equal(breaker.state(3), "open");
  assert.equal(breaker.state(200), "half-open");
  assert.equal(breaker.acquire(200), true, "the probe");
  assert.equal(breaker.acquire(201), false, "one probe at a time");
  // The slow request's client hangs up: that frees no probe.
  breaker.cancel(0);
  assert.equal(breaker.acquire(210), false, "a stale cancel let a second probe through");
  // The slow request succeeds: that does not close the breaker.
  breaker.record(true, 220, 0);
  assert.equal(breaker.state(221), "half-open");
  // Nor would it reopen it.
  breaker.record(false, 222, 0);
  assert.equal(breaker.state(223), "half-open");
  // The probe decides.
  breaker.record(true, 230, 200);
  assert.equal(breaker.state(231), "closed");
});

Deno.test("a probe whose client hung up frees its turn for another probe", () => {
  const breaker = new Breaker(options);
  breaker.acquire(1);
  breaker.record(false, 1, 1);
  breaker.acquire(2);
  breaker.record(false, 2, 2);
  assert.equal(breaker.state(200), "half-open");
  assert.equal(breaker.acquire(200), true);
  breaker.cancel(200);
  assert.equal(breaker.acquire(210), true);
});
