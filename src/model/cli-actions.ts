/** The work behind `fromage generate` / `fromage retrieve` (imported lazily by commands.ts). */
import { readFile } from 'node:fs/promises';
import { loadConfig, type Config } from '../config.ts';
import { ImageInputError } from '../conversation/types.ts';
import { loadCaseFile } from './case-file.ts';
import { toCliResult, toText } from './cli-output.ts';
import type { ModelCommandOptions } from './commands.ts';
import { EngineInputError } from './engine-api.ts';
import { ModelUserError as UserError } from './errors.ts';
import type { FromageResult } from './fromage.ts';
import { openIndexBackend } from './index-backend.ts';
import { decodeImage } from './preprocess.ts';
import { FromageRuntime, type RuntimeItem } from './runtime.ts';

const warn = (m: string) => process.stderr.write(`warning: ${m}\n`);

/** What the command runs with: its flags, else the configuration (.env was read by the CLI). */
interface Resolved {
  readonly config: Config;
  readonly bundle: string;
  readonly indexDirs: readonly string[];
}

function resolveOptions(opts: ModelCommandOptions): Resolved {
  const config = loadConfig();
  return { config, bundle: opts.bundle ?? config.FROMAGE_BUNDLE, indexDirs: opts.index.length > 0 ? opts.index : config.FROMAGE_INDEX };
}

async function openRuntime(opts: ModelCommandOptions, r: Resolved): Promise<FromageRuntime> {
  const { config } = r;
  const runtime = await FromageRuntime.open(r.bundle, { device: config.FROMAGE_DEVICE, threads: config.FROMAGE_THREADS || undefined, warn });
  if (r.indexDirs.length > 0) {
    try {
      runtime.setRetrieval(
        await openIndexBackend({
          indexDirs: r.indexDirs,
          logitScale: runtime.bundle.manifest.model.logit_scale,
          fetch: opts.fetch,
          fetcher: { allow: config.FROMAGE_FETCH_ALLOW, maxBytes: config.FROMAGE_MAX_IMAGE_BYTES },
          warn,
        }),
      );
    } catch (err) {
      await runtime.close();
      throw err;
    }
  }
  return runtime;
}

function print(result: FromageResult, json: boolean | undefined): void {
  process.stdout.write(json ? `${JSON.stringify(toCliResult(result))}\n` : `${toText(result)}\n`);
}

/** Errors the user caused become UserErrors (message only, exit 1). */
async function userErrors<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof EngineInputError || err instanceof ImageInputError) throw new UserError(err.message);
    throw err;
  }
}

export async function runGenerateCommand(opts: ModelCommandOptions & { input: string }): Promise<void> {
  const resolved = resolveOptions(opts);
  const kase = await loadCaseFile(opts.input);
  const items: RuntimeItem[] = [];
  for (const p of kase.prompt) {
    if ('text' in p) {
      items.push({ type: 'text', text: p.text });
      continue;
    }
    let data: Buffer;
    try {
      data = await readFile(p.image);
    } catch (err) {
      throw new UserError(`cannot read prompt image ${p.image}: ${(err as Error).message}`);
    }
    // Checked here, before the model loads, so the message can name the file.
    try {
      await decodeImage(data);
    } catch (err) {
      if (err instanceof ImageInputError) throw new UserError(`prompt image ${p.image} in ${opts.input}: ${err.message}`);
      throw err;
    }
    items.push({ type: 'image', data, load: p.load });
  }
  const runtime = await openRuntime(opts, resolved);
  try {
    const s = kase.settings;
    const result = await userErrors(() =>
      runtime.generate(items, {
        numWords: s.num_words,
        retScaleFactor: s.ret_scale_factor,
        maxNumRets: s.max_num_rets,
        maxImgPerRet: s.max_img_per_ret,
        temperature: s.temperature,
        topP: s.top_p,
        seed: s.seed,
        minWordTokens: s.min_word_tokens,
        referenceRetOffsetBug: s.reference_ret_offset_bug,
      }),
    );
    print(result, opts.json);
  } finally {
    await runtime.close();
  }
}

export async function runRetrieveCommand(text: string, opts: ModelCommandOptions & { count: string }): Promise<void> {
  const count = Number(opts.count);
  if (!Number.isInteger(count) || count < 1 || count > 64) throw new UserError(`--count must be an integer from 1 to 64, got ${opts.count}`);
  const resolved = resolveOptions(opts);
  if (resolved.indexDirs.length === 0)
    throw new UserError('fromage retrieve needs an index: give --index DIR or set FROMAGE_INDEX in .env (build one with `npx fromage index import` or `npx fromage index build`)');
  const runtime = await openRuntime(opts, resolved);
  try {
    print(await userErrors(() => runtime.retrieve(text, count)), opts.json);
  } finally {
    await runtime.close();
  }
}
