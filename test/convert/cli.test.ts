import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { registerConvertCommands } from '../../src/convert/commands.ts';
import { CLIP_DIR, FROMAGE_VIS4, OPT_DIR } from './helpers.ts';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function run(args: string[]): Promise<string> {
  const program = new Command('fromage').exitOverride();
  registerConvertCommands(program);
  let out = '';
  const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out += String(chunk);
    return true;
  });
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    await program.parseAsync(['node', 'fromage', ...args]);
  } finally {
    write.mockRestore();
    err.mockRestore();
  }
  return out;
}

describe('fromage convert / fromage inspect', () => {
  it('converts the fixtures and inspect lists the manifest and every graph input/output', async () => {
    const parent = await mkdtemp(join(tmpdir(), 'fromage-cli-'));
    dirs.push(parent);
    const out = join(parent, 'bundle');
    const said = await run(['convert', '--opt', OPT_DIR, '--clip', CLIP_DIR, '--fromage', FROMAGE_VIS4, '--out', out, '--weights', 'int4', '--block-size', '16']);
    expect(said).toMatch(/wrote bundle [0-9a-f]{16} \(int4\)/);
    const report = await run(['inspect', out]);
    expect(report).toMatch(/weights: int4, block size 16/);
    expect(report).toMatch(/fromage: 4 visual token\(s\)/);
    expect(report).toMatch(/<\|image\|> 294, \[RET\] 295, newline 202/);
    for (const name of ['pixel_values', 'visual_embs', 'ret_embs', 'pooler_output', 'input_ids', 'inputs_embeds', 'attention_mask', 'position_ids', 'num_logits_to_keep', 'past_key_values.1.value', 'logits', 'ret_embeddings', 'new_key_values.1.key']) {
      expect(report).toContain(`${name}: `);
    }
    expect(report).toMatch(/out visual_embs: float32 \[batch, 4, 64\]/);
  });

  it('inspect of a folder without fromage.json says so', async () => {
    await expect(run(['inspect', tmpdir()])).rejects.toThrow(/fromage\.json: not found/);
  });
});
