/** The generation cases of reference/fromage_cases.json the converter tests replay. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { FIX } from './helpers.ts';

const caseSchema = z.object({
  input_embs: z.string().optional(),
  step_logits: z.string().optional(),
  embeddings: z.string().optional(),
  generated_ids_full: z.array(z.number().int()).optional(),
  kwargs: z.object({ ret_scale_factor: z.number().optional() }).loose().optional(),
});
export type FromageCase = z.infer<typeof caseSchema>;

const file = z.record(z.string(), z.unknown()).parse(JSON.parse(readFileSync(join(FIX, 'reference/fromage_cases.json'), 'utf8')));

/** Cases of a variant that carry a final input_embs tensor, by name. */
export function casesOf(variant: 'vis1' | 'vis4'): [string, FromageCase][] {
  const v = z.record(z.string(), z.unknown()).parse(file[variant]);
  const out: [string, FromageCase][] = [];
  for (const [name, raw] of Object.entries(v)) {
    const c = caseSchema.safeParse(raw);
    if (c.success && c.data.input_embs) out.push([name, c.data]);
  }
  return out;
}
