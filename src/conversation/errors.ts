/**
 * A failure whose message is the whole story for the person running the bot (a rejected token,
 * a missing setting, a bad file). The CLI prints it without a stack trace. Each area names its
 * own subclass (`class IndexError extends UserFacingError {}`); the name follows the class.
 */
export class UserFacingError extends Error {
  readonly userFacing = true;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}
