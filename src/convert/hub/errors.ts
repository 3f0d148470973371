import { UserFacingError } from '../../conversation/errors.ts';

/**
 * Hub failures a user can cause or fix (wrong endpoint, missing token, gated repo, a mirror
 * serving the wrong bytes). `userFacing` makes the CLI print the message without a stack.
 */
export class HubError extends UserFacingError {
  constructor(
    message: string,
    /** HTTP status when the hub answered, for callers that branch on it (retries). */
    readonly status?: number,
  ) {
    super(message);
  }

  /** 5xx and 429 may succeed on a later try; 4xx will not. */
  get retryable(): boolean {
    return this.status === undefined || this.status === 429 || this.status >= 500;
  }
}

/** A downloaded file whose digest differs from the hub's metadata. Never retried silently. */
export class ChecksumError extends UserFacingError {
  constructor(
    readonly file: string,
    readonly algorithm: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(
      `${file}: ${algorithm} mismatch (expected ${expected}, got ${actual}). The partial download was deleted and ` +
        'nothing was converted. Run `fromage setup` again to re-download it; if it fails again, the server at ' +
        'HF_ENDPOINT is serving different bytes than its own metadata says (check the mirror, or unset HF_ENDPOINT).',
    );
  }
}
