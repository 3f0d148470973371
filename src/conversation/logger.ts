/**
 * The logging adapters receive: the part of pino they use, so adapters depend on this folder
 * only. pino's Logger satisfies it.
 */
export interface LogMethod {
  (details: object, message?: string): void;
  (message: string): void;
}

export interface AdapterLogger {
  debug: LogMethod;
  info: LogMethod;
  warn: LogMethod;
  error: LogMethod;
  child(bindings: Record<string, unknown>): AdapterLogger;
}
