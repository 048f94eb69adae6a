/**
 * The benchmark upstream in Deno, run as a child process:
 *
 *   deno run --allow-net bench/upstream.ts PORT
 *
 * - `GET /download?bytes=N`: N bytes of the pattern, streamed in chunks
 * - `POST /upload`: reads the body as it arrives without keeping it, checks
 *   the pattern, answers `{ "bytes": N, "first_mismatch": null }`
 * - anything else: `200 ok` (the fallback upstream when nginx is missing)
 *
 * @module
 */
import { PatternChecker, patternStream } from "./_pattern.ts";

async function upload(request: Request): Promise<Response> {
  const checker = new PatternChecker();
  if (request.body) {
    for await (const chunk of request.body) checker.update(chunk);
  }
  return Response.json({ bytes: checker.bytes, first_mismatch: checker.firstMismatch ?? null });
}

function download(url: URL): Response {
  const bytes = Number(url.searchParams.get("bytes") ?? "0");
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    return new Response("bytes must be a whole number\n", { status: 400 });
  }
  return new Response(patternStream(bytes), {
    headers: { "content-type": "application/octet-stream" },
  });
}

/** Answers one request. */
export function handle(request: Request): Promise<Response> | Response {
  const url = new URL(request.url);
  if (url.pathname === "/upload" && request.method === "POST") return upload(request);
  if (url.pathname === "/download" && request.method === "GET") return download(url);
  return new Response("ok", { headers: { "content-type": "text/plain" } });
}

if (import.meta.main) {
  const port = Number(Deno.args[0]);
  if (!Number.isInteger(port) || port <= 0) {
    console.error("Usage: upstream.ts PORT");
    Deno.exit(2);
  }
  Deno.serve({
    hostname: "127.0.0.1",
    port,
    onListen: (addr) => console.error(`upstream listening on ${addr.hostname}:${addr.port}`),
  }, handle);
}
