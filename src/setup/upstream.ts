/**
 * Which upstream files setup fetches, from which hub repositories, and where they land.
 * The converter reads these folders (`fromage convert --opt --clip --fromage`).
 */
import type { HubFile } from '../convert/hub/client.ts';

export type UpstreamRole = 'opt' | 'clip' | 'fromage';

export interface UpstreamRepo {
  role: UpstreamRole;
  repo: string;
  /** Revision pinned on the first run (the lock file then holds the commit it resolved to). */
  revision: string;
  /** Each entry must match at least one listed file. */
  required: (string | RegExp)[];
  /** Taken when listed. */
  optional: (string | RegExp)[];
  /** Taken only when every file of the group is listed (a variant published as a set). */
  optionalGroups: string[][];
}

export const UPSTREAM: readonly UpstreamRepo[] = [
  {
    role: 'opt',
    repo: 'facebook/opt-6.7b',
    revision: 'main',
    // The fp16 PyTorch shards and their index; main has no safetensors and no tokenizer.json.
    required: ['config.json', 'pytorch_model.bin.index.json', /^pytorch_model-\d+-of-\d+\.bin$/, 'vocab.json', 'merges.txt'],
    optional: ['generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json'],
    optionalGroups: [],
  },
  {
    role: 'clip',
    repo: 'openai/clip-vit-large-patch14',
    revision: 'main',
    required: ['config.json', 'model.safetensors', 'preprocessor_config.json'],
    optional: [],
    optionalGroups: [],
  },
  {
    role: 'fromage',
    repo: 'jykoh/fromage',
    revision: 'main',
    // The files the reference Gradio demo downloads; the 4-visual-token model where published.
    required: ['model_args.json', 'pretrained_ckpt.pth.tar'],
    optional: [],
    optionalGroups: [['fromage_vis4/model_args.json', 'fromage_vis4/pretrained_ckpt.pth.tar']],
  },
];

/** Folder (relative to the upstream dir) a repo's files are written to: its repo id. */
export function repoDir(repo: string): string {
  return repo;
}

/** Where the 4-visual-token variant lives inside the FROMAGe folder. */
export const VIS4_SUBDIR = 'fromage_vis4';

const matches = (pattern: string | RegExp, path: string) => (typeof pattern === 'string' ? pattern === path : pattern.test(path));

export interface Selection {
  files: HubFile[];
  /** Required patterns nothing matched, as text for the error message. */
  missing: string[];
}

export function selectFiles(spec: UpstreamRepo, listed: readonly HubFile[]): Selection {
  const picked = new Map<string, HubFile>();
  const missing: string[] = [];
  for (const pattern of spec.required) {
    const hits = listed.filter((f) => matches(pattern, f.path));
    if (hits.length === 0) missing.push(String(pattern));
    for (const f of hits) picked.set(f.path, f);
  }
  for (const pattern of spec.optional) for (const f of listed) if (matches(pattern, f.path)) picked.set(f.path, f);
  for (const group of spec.optionalGroups) {
    const hits = group.map((p) => listed.find((f) => f.path === p));
    if (hits.every((f) => f !== undefined)) for (const f of hits) picked.set(f!.path, f!);
  }
  return { files: [...picked.values()].sort((a, b) => a.path.localeCompare(b.path)), missing };
}
