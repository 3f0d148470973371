/** Snowflake-shaped ids, increasing, unique within a test run. */
let nextId = 1_300_000_000_000_000_000n;

export function snowflake(): string {
  nextId += 1n;
  return nextId.toString();
}
