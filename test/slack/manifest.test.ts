import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';

/** The list items under `key:` (comments skipped), enough for this flat manifest. */
function listUnder(yaml: string, key: string): string[] {
  const lines = yaml.split('\n');
  const start = lines.findIndex((l) => l.trim() === `${key}:`);
  const items: string[] = [];
  for (const line of lines.slice(start + 1)) {
    const t = line.trim();
    if (t.startsWith('#') || t === '') continue;
    if (!t.startsWith('- ')) break;
    items.push(t.slice(2).trim());
  }
  return items;
}

it('the Slack manifest asks for exactly the scopes and events the adapter uses, with Socket Mode on', () => {
  const yaml = readFileSync(new URL('../../ops/slack-app-manifest.yaml', import.meta.url), 'utf8');
  expect(listUnder(yaml, 'bot').sort()).toEqual(['app_mentions:read', 'chat:write', 'commands', 'files:read', 'files:write', 'im:history']);
  expect(listUnder(yaml, 'bot_events').sort()).toEqual(['app_mention', 'message.im']);
  expect(yaml).toMatch(/^\s+socket_mode_enabled: true$/m);
  expect(yaml).toMatch(/^\s+- command: \/fromage$/m);
});
