/**
 * "No mention ever pings", checked on everything the fakes recorded. Discord: every message the
 * bot creates or edits says `allowed_mentions: { parse: [] }` with no user or role listed and no
 * ping of the replied-to user. Slack: no text the bot posts holds Slack's mention syntax
 * (`<!everyone>`, `<!here>`, `<!channel>`, `<!subteam^…>`, `<@U…>`), which is what pings there.
 */
import type { SoakBot } from './harness.ts';

const DISCORD_WRITES = /^\/(channels\/\d+\/messages(\/\d+)?|webhooks\/\d+\/[^/]+(\/messages\/@original)?|interactions\/\d+\/[^/]+\/callback)$/;
const SLACK_PING = /<[!@]/;

function discordAllowed(body: Record<string, unknown>): unknown {
  if ('content' in body || 'files' in body || 'attachments' in body || 'embeds' in body) return body.allowed_mentions;
  const data = body.data as Record<string, unknown> | undefined;
  if (data && ('content' in data || 'attachments' in data)) return data.allowed_mentions;
  return 'no message content';
}

/** How many posts the checks looked at (so a pass is not a pass over nothing). */
export const mentionChecks = { discord: 0, slack: 0 };

export function mentionProblems(bot: SoakBot): string[] {
  const problems: string[] = [];
  mentionChecks.discord = 0;
  mentionChecks.slack = 0;
  for (const r of bot.discord.requests) {
    if (!(r.method === 'POST' || r.method === 'PATCH') || !DISCORD_WRITES.test(r.path) || !r.body) continue;
    const allowed = discordAllowed(r.body);
    if (allowed === 'no message content') continue;
    mentionChecks.discord++;
    const a = allowed as { parse?: unknown[]; users?: unknown[]; roles?: unknown[]; replied_user?: boolean } | undefined;
    const safe = a !== undefined && Array.isArray(a.parse) && a.parse.length === 0 && !a.users?.length && !a.roles?.length && a.replied_user !== true;
    if (!safe) problems.push(`discord ${r.method} ${r.path}: allowed_mentions ${JSON.stringify(allowed)}`);
  }
  for (const c of bot.slack.calls) {
    if (!/^chat\.(postMessage|update|postEphemeral)$|^files\.completeUploadExternal$/.test(c.method)) continue;
    mentionChecks.slack++;
    for (const field of ['text', 'blocks', 'initial_comment']) {
      const v = c.args[field];
      if (v !== undefined && SLACK_PING.test(v)) problems.push(`slack ${c.method} ${field}: ${v.slice(0, 200)}`);
    }
  }
  for (const [url, list] of bot.slack.responses)
    for (const body of list) {
      const t = JSON.stringify(body.text ?? '') + JSON.stringify(body.blocks ?? '');
      if (SLACK_PING.test(t)) problems.push(`slack response_url ${url}: ${t.slice(0, 200)}`);
    }
  return problems;
}
