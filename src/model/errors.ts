/** Errors of the model runtime whose message is the whole story for the user. */
import { UserFacingError } from '../conversation/errors.ts';

/** The bundle is missing, incomplete or does not match this runtime. */
export class BundleError extends UserFacingError {}

/** The job was cancelled through its AbortSignal. */
export class CancelledError extends Error {
  constructor(message = 'generation was cancelled') {
    super(message);
    this.name = 'CancelledError';
  }
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new CancelledError();
}

/** A user-caused failure in a model command: src/cli.ts prints it without a stack. */
export class ModelUserError extends UserFacingError {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}
