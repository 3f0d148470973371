/**
 * CASE.json for `fromage generate --input`: a FROMAGe prompt and its generation settings,
 * validated with messages that name the field. Image paths are relative to the file.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { UserFacingError } from '../conversation/errors.ts';

const promptItem = z.union([
  z.object({ image: z.string().min(1), load: z.enum(['convert_rgb', 'demo_upload']).optional() }).strict(),
  z.object({ text: z.string() }).strict(),
]);

export const caseSchema = z
  .object({
    prompt: z.array(promptItem).min(1),
    num_words: z.number().int().min(0).max(4096).default(16),
    ret_scale_factor: z.number().finite().default(1),
    max_num_rets: z.number().int().min(0).default(1),
    max_img_per_ret: z.number().int().min(1).max(64).default(1),
    temperature: z.number().finite().min(0).default(0),
    top_p: z.number().gt(0).max(1).default(1),
    seed: z.number().int().default(0),
    min_word_tokens: z.number().int().min(0).default(0),
    /** Reproduce the reference's num_words=0 [RET] offset bug (for oracle comparisons). */
    reference_ret_offset_bug: z.boolean().default(false),
  })
  .strict()
  .refine((c) => c.temperature > 0 || c.top_p === 1, { message: 'top_p must be 1 when temperature is 0 (greedy decoding)', path: ['top_p'] });

export type CaseFile = z.infer<typeof caseSchema>;

export class CaseFileError extends UserFacingError {}

function fieldPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), '') || '(root)';
}

export function parseCase(raw: unknown, source: string): CaseFile {
  const r = caseSchema.safeParse(raw);
  if (r.success) return r.data;
  const problems = r.error.issues.map((i) => {
    // A prompt item matching neither shape: say what is expected rather than zod's union text.
    if (i.code === 'invalid_union') return `${fieldPath(i.path)}: expected {"image": "path"} or {"text": "..."}`;
    return `${fieldPath(i.path)}: ${i.message}`;
  });
  throw new CaseFileError(`${source} is invalid:\n  ${problems.join('\n  ')}`);
}

export interface LoadedCase {
  readonly settings: CaseFile;
  /** Prompt items with image paths resolved against the case file's folder. */
  readonly prompt: ({ readonly text: string } | { readonly image: string; readonly load?: 'convert_rgb' | 'demo_upload' })[];
}

export async function loadCaseFile(path: string): Promise<LoadedCase> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new CaseFileError(`cannot read ${path}: ${(err as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CaseFileError(`${path} is not valid JSON: ${(err as Error).message}`);
  }
  const settings = parseCase(raw, path);
  const base = dirname(resolve(path));
  return { settings, prompt: settings.prompt.map((p) => ('image' in p ? { ...p, image: resolve(base, p.image) } : p)) };
}
