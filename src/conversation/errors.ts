/**
 * A failure whose message is the whole story for the person running the bot (a rejected token,
 * a missing setting). The CLI prints it without a stack trace.
 */
export class UserFacingError extends Error {
  readonly userFacing = true;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UserFacingError';
  }
}
