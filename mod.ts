/**
 * The public API of sluice for plugin authors and embedders.
 *
 * @example A plugin
 * ```ts
 * import { definePlugin, problem } from "./mod.ts";
 * import { z } from "zod";
 *
 * export default definePlugin({
 *   name: "maintenance",
 *   options: z.object({ enabled: z.boolean().default(false) }),
 *   create({ enabled }) {
 *     return function maintenance(_ctx, next) {
 *       if (enabled) return problem(503, { detail: "Back soon", retryAfterSeconds: 60 });
 *       return next();
 *     };
 *   },
 * });
 * ```
 *
 * @module
 */
export {
  type ClientDirectory,
  type ClientIdentity,
  type ClientReport,
  ContextKey,
  definePlugin,
  type GatewayServices,
  type Handler,
  type KeepOptions,
  type KeyEntry,
  type Next,
  type PluginContext,
  type PluginDefinition,
  type RequestContext,
  type RouteInfo,
  type TierSpec,
  type UpstreamInfo,
} from "./src/plugin.ts";
export type {
  BucketDecision,
  BucketQuery,
  DecisionSource,
  FailurePolicy,
  LimitState,
  LimitStore,
  SourcedBucketDecision,
  SourcedWindowDecision,
  StoreHealth,
  StoreKind,
  WindowAlgorithm,
  WindowDecision,
  WindowLimit,
  WindowQuery,
} from "./src/store/store.ts";
export type { EnvLookup } from "./src/config/interpolate.ts";
export type { ConfigIssue } from "./src/config/load_config.ts";
export { isGatewayAnswer, problem, PROBLEM_TYPE_BASE, type ProblemOptions } from "./src/problem.ts";
export { duration, type DurationUse, rate } from "./src/config/schema.ts";
export type { Rate } from "./src/config/duration.ts";
export {
  Gateway,
  type GatewayOptions,
  type ReloadFailure,
  type ReloadResult,
} from "./src/gateway.ts";
export { type LogFields, Logger, type LogLevel, type LogSink } from "./src/log.ts";
export type { Metrics } from "./src/metrics.ts";
export {
  createHandler,
  type CreateHandlerOptions,
  requestContext,
  type RequestContextOptions,
} from "./src/testing.ts";
