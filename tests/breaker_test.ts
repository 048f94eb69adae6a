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

Deno.test("a late failure (a body cut short) counts where its head was counted, never as a second request", () => {
  const opts = { ...options, failureRatio: 0.6, minRequests: 8, windowMs: 2_000 };
  // 8 heads at t=0, their bodies cut at t=300 (a later bucket): 8 failures in 8 requests.
  const cut = new Breaker(opts);
  const heads = Array.from({ length: 8 }, () => cut.record(true, 0, 0));
  for (const head of heads) cut.recordLateFailure(head, 300);
  assert.equal(cut.state(301), "open");

  // 4 successes and 4 cut bodies: 0.5, under a ratio of 0.75.
  const half = new Breaker({ ...opts, failureRatio: 0.75 });
  const counted = Array.from({ length: 8 }, () => half.record(true, 0, 0));
  for (const head of counted.slice(0, 4)) half.recordLateFailure(head, 300);
  assert.equal(half.state(301), "closed");

  // A head whose bucket left the window counts nothing more...
  const old = new Breaker({ ...opts, minRequests: 1, failureRatio: 0.1 });
  const gone = old.record(true, 0, 0);
  old.recordLateFailure(gone, 5_000);
  assert.equal(old.state(5_001), "closed");
  // ...unless the upstream stalled (the read timeout): it fails now, and counts now.
  const stalled = new Breaker({ ...opts, minRequests: 1, failureRatio: 0.5 });
  const head = stalled.record(true, 0, 0);
  stalled.recordLateFailure(head, 300_000, true);
  assert.equal(stalled.state(300_001), "open");
});

Deno.test("a probe whose body is cut after the probes closed the breaker opens it again", () => {
  const breaker = new Breaker({ ...options, probes: 2 });
  breaker.record(false, 0, 0);
  breaker.record(false, 1, 1);
  assert.equal(breaker.state(200), "half-open");
  const first = breaker.record(true, 200, 200);
  const second = breaker.record(true, 201, 200);
  assert.equal(breaker.state(202), "closed");
  breaker.recordLateFailure(second, 500);
  assert.equal(breaker.state(501), "open");
  // A probe of that spell failing later again changes nothing more.
  breaker.recordLateFailure(first, 520);
  assert.equal(breaker.state(521), "open");

  // Once the window has passed since the probes closed it, a probe's cut body is old news.
  const later = new Breaker({ ...options, probes: 1 });
  later.record(false, 0, 0);
  later.record(false, 1, 1);
  const probe = later.record(true, 200, 200);
  assert.equal(later.state(201), "closed");
  later.recordLateFailure(probe, 200 + options.windowMs);
  assert.equal(later.state(201 + options.windowMs), "closed");
});
