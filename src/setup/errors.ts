/** A setup failure whose message names the cause and the fix; printed without a stack. */
export class SetupError extends Error {
  readonly userFacing = true;

  constructor(message: string) {
    super(message);
    this.name = 'SetupError';
  }
}
