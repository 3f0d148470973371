import { UserFacingError } from '../../conversation/errors.ts';

/**
 * Every reader failure a user can cause (bad path, truncated or hostile file) is a
 * CheckpointError: it names the file and the cause, and `userFacing` makes the CLI print
 * the message alone instead of a stack trace.
 */
export class CheckpointError extends UserFacingError {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`${file}: ${reason}`);
  }
}
