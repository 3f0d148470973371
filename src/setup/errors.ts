import { UserFacingError } from '../conversation/errors.ts';

/** A setup failure whose message names the cause and the fix; printed without a stack. */
export class SetupError extends UserFacingError {}
