/** JSON-lines logging: every stdout line is one JSON object. */

/** The levels, least to most severe. */
export type LogLevel = "debug" | "info" | "warn" | "error";

const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Fields added to a log line. Never put an API key in clear here: use the client id. */
export type LogFields = Record<string, unknown>;

/** Writes one line of text; the default writes to stdout. */
export type LogSink = (line: string) => void;

const encoder = new TextEncoder();

function stdoutSink(line: string): void {
  Deno.stdout.writeSync(encoder.encode(line + "\n"));
}

/** True when `text` names a log level. */
export function isLogLevel(text: string): text is LogLevel {
  return Object.hasOwn(LEVELS, text.toLowerCase());
}

/** Parses a `LOG_LEVEL` value; unknown values give `info`. */
export function parseLogLevel(text: string | undefined): LogLevel {
  const value = (text ?? "").toLowerCase();
  return isLogLevel(value) ? value : "info";
}

/** A structured logger that writes one JSON object per line. */
export class Logger {
  #min: number;
  #sink: LogSink;
  #bound: LogFields;

  constructor(
    level: LogLevel = "info",
    options: { sink?: LogSink; fields?: LogFields } = {},
  ) {
    this.#min = LEVELS[level];
    this.#sink = options.sink ?? stdoutSink;
    this.#bound = options.fields ?? {};
  }

  /** A logger that adds these fields to each line. */
  child(fields: LogFields): Logger {
    const child = new Logger("debug", {
      sink: this.#sink,
      fields: { ...this.#bound, ...fields },
    });
    child.#min = this.#min;
    return child;
  }

  /** True when lines of this level are written. */
  enabled(level: LogLevel): boolean {
    return LEVELS[level] >= this.#min;
  }

  debug(msg: string, fields?: LogFields): void {
    this.#write("debug", msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.#write("info", msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.#write("warn", msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.#write("error", msg, fields);
  }

  #write(level: LogLevel, msg: string, fields?: LogFields): void {
    if (LEVELS[level] < this.#min) return;
    const time = new Date().toISOString();
    // A field cannot pass for the line's own time, level or message.
    const line: LogFields = { time, level, msg, ...this.#bound, ...fields };
    line.time = time;
    line.level = level;
    line.msg = msg;
    let text: string;
    try {
      text = JSON.stringify(line, errorReplacer);
    } catch {
      // A field JSON cannot hold (a BigInt, a cycle) is named so, the others
      // kept: a logging call never throws.
      const safe: LogFields = {};
      for (const [name, value] of Object.entries(line)) {
        try {
          JSON.stringify(value, errorReplacer);
          safe[name] = value;
        } catch {
          safe[name] = "[unserializable]";
        }
      }
      text = JSON.stringify(safe, errorReplacer);
    }
    this.#sink(text);
  }
}

function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    return { name: value.name, message: value.message };
  }
  return value;
}

const reported = new WeakSet<object>();

/** Marks an error as logged with its request's details: the server's own handler logs it no more. */
export function markReported(error: unknown): void {
  if (typeof error === "object" && error !== null) reported.add(error);
}

/** True for an error {@linkcode markReported} marked. */
export function isReported(error: unknown): boolean {
  return typeof error === "object" && error !== null && reported.has(error);
}
