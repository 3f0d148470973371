import { Option, type Command } from 'commander';

const int = (v: string) => Number.parseInt(v, 10);

/**
 * logit_scale from --logit-scale, else a bundle's fromage.json: --bundle, else the configured
 * FROMAGE_BUNDLE when it exists, so scores are FROMAGe's (exp(logit_scale) * cosine) by default.
 */
async function logitScaleFrom(o: { logitScale?: number; bundle?: string }, useConfigured = true): Promise<number | undefined> {
  if (o.logitScale !== undefined) return o.logitScale;
  const { readManifest } = await import('../model/bundle.ts');
  if (o.bundle) return (await readManifest(o.bundle)).model.logit_scale;
  if (!useConfigured) return undefined;
  const { existsSync } = await import('node:fs');
  const { join } = await import('node:path');
  const configured = process.env.FROMAGE_BUNDLE?.trim() || 'checkpoints/fromage-opt-6.7b';
  if (!existsSync(join(configured, 'fromage.json'))) return undefined;
  return (await readManifest(configured)).model.logit_scale;
}

export function registerIndexCommands(program: Command): void {
  const index = program.command('index').description('retrieval indexes: import CC3M, build your own gallery, merge, prune, search');

  index
    .command('import')
    .description("import FROMAGe's cc3m_embeddings.pkl into an index directory")
    .argument('<pickle>', 'cc3m_embeddings.pkl ({paths, embeddings}: 2-D float32/float16 array or a list of 1-D arrays)')
    .requiredOption('--out <dir>', 'index directory to write')
    .option('--bundle <dir>', "record this bundle's logit_scale (scores = exp(logit_scale) * cosine); default: FROMAGE_BUNDLE when it exists")
    .option('--logit-scale <x>', 'record this raw logit_scale instead', Number.parseFloat)
    .addOption(new Option('--bits <n>', 'quantized search copy: 8 (default) or 4 bits').choices(['4', '8']).default('8'))
    .option('--no-quantize', 'skip the quantized search graph (exact search only)')
    .option('--force', 'replace an existing index in --out')
    .action(async (pickle: string, o: { out: string; bundle?: string; logitScale?: number; bits: '4' | '8'; quantize: boolean; force?: boolean }) => {
      const { importPickle } = await import('./import-pickle.ts');
      const started = Date.now();
      const m = await importPickle(pickle, o.out, {
        logitScale: await logitScaleFrom(o),
        quantize: o.quantize,
        bits: o.bits === '4' ? 4 : 8,
        force: o.force === true,
        warn: (message) => process.stderr.write(`warning: ${message}\n`),
      });
      process.stdout.write(`imported ${m.rows} rows of ${m.dim}-d embeddings into ${o.out} in ${((Date.now() - started) / 1000).toFixed(1)}s\n`);
    });

  index
    .command('build')
    .description("embed your own images with the bundle's vision graph into an index (resumable)")
    .option('--bundle <dir>', 'model bundle (fromage.json, vision.onnx) (default: FROMAGE_BUNDLE)')
    .requiredOption('--images <path>', 'a folder of images, or a text file with one image URL per line')
    .requiredOption('--out <dir>', 'index directory to write (an interrupted build resumes here)')
    .option('--base-url <url>', 'for a folder: the public URL it is served under (default: file:// URLs, served from disk)')
    .option('--batch <n>', 'images per vision batch', int, 8)
    .action(async (o: { bundle?: string; images: string; out: string; baseUrl?: string; batch: number }) => {
      const { buildGallery } = await import('./build-gallery.ts');
      const { loadConfig } = await import('../config.ts');
      const config = loadConfig();
      const r = await buildGallery({
        bundle: o.bundle ?? config.FROMAGE_BUNDLE,
        images: o.images,
        out: o.out,
        baseUrl: o.baseUrl,
        batchSize: o.batch,
        fetcher: { allow: config.FROMAGE_FETCH_ALLOW, maxBytes: config.FROMAGE_MAX_IMAGE_BYTES },
        onSkip: (input, why) => process.stderr.write(`skipped ${input}: ${why}\n`),
      });
      process.stdout.write(`index ${o.out}: ${r.manifest.rows} rows (${r.embedded} embedded now, ${r.resumedFrom} resumed, ${r.skipped} skipped)\n`);
    });

  index
    .command('merge')
    .description('merge several indexes into one (dead rows are dropped)')
    .argument('<indexes...>', 'index directories, in order')
    .requiredOption('--out <dir>', 'index directory to write')
    .action(async (dirs: string[], o: { out: string }) => {
      const { mergeIndexes } = await import('./merge.ts');
      const m = await mergeIndexes(dirs, o.out);
      process.stdout.write(`merged ${dirs.length} indexes into ${o.out}: ${m.rows} rows\n`);
    });

  index
    .command('prune')
    .description('check every URL and mark dead rows so search skips them (rate-limited, resumable)')
    .requiredOption('--index <dir>', 'index directory')
    .option('--rate <n>', 'requests started per second', Number.parseFloat, 10)
    .option('--concurrency <n>', 'parallel requests', int, 8)
    .option('--timeout <s>', 'per-URL total timeout in seconds', Number.parseFloat, 10)
    .option('--limit <n>', 'check at most this many rows in this run', int)
    .option('--restart', 'start over instead of resuming')
    .action(async (o: { index: string; rate: number; concurrency: number; timeout: number; limit?: number; restart?: boolean }) => {
      const { pruneIndex } = await import('./prune.ts');
      const { loadConfig } = await import('../config.ts');
      const config = loadConfig();
      const controller = new AbortController();
      // Ctrl-C saves progress (the current window is abandoned) so the next run resumes.
      process.once('SIGINT', () => controller.abort());
      const s = await pruneIndex(o.index, {
        rate: o.rate,
        concurrency: o.concurrency,
        limit: o.limit,
        restart: o.restart,
        signal: controller.signal,
        fetcher: { allow: config.FROMAGE_FETCH_ALLOW, totalTimeoutMs: o.timeout * 1000 },
      });
      process.stdout.write(
        `${s.complete ? 'pruned' : 'paused'} ${o.index}: ${s.checked} checked, ${s.dead} dead, ${s.transient} temporarily failing of ${s.rows}${s.complete ? '' : ' (run again to resume)'}\n`,
      );
    });

  index
    .command('quantize')
    .description('(re)build the quantized search graph of an index')
    .requiredOption('--index <dir>', 'index directory')
    .addOption(new Option('--bits <n>', '8 (default) or 4 bits').choices(['4', '8']).default('8'))
    .option('--block-size <n>', 'values per scale (power of two >= 16)', int, 128)
    .action(async (o: { index: string; bits: '4' | '8'; blockSize: number }) => {
      const { readManifest } = await import('./index-files.ts');
      const { buildSearchGraph } = await import('./quantized-search.ts');
      const m = await buildSearchGraph(o.index, readManifest(o.index), { bits: o.bits === '4' ? 4 : 8, blockSize: o.blockSize });
      process.stdout.write(`wrote ${o.index}/search.onnx (${m.quantized?.bits}-bit, block ${m.quantized?.block_size})\n`);
    });

  index
    .command('search')
    .description('search indexes with query vectors from a JSON file')
    .requiredOption('--index <dirs>', 'index directory (several: comma-separated)')
    .requiredOption('--vector <file>', 'JSON: one vector [..] or a list of vectors [[..], ..] (raw [RET] embeddings)')
    .option('-k <n>', 'results per query', int, 8)
    .option('--exact', 'exact fp32 scan instead of the quantized shortlist')
    .option('--repeat <n>', 'timed repeats of each query', int, 1)
    .option('--bundle <dir>', "score with this bundle's logit_scale (default: the one the index recorded, else cosine)")
    .option('--logit-scale <x>', 'score with this raw logit_scale', Number.parseFloat)
    .option('--json', 'print {"results": [[{row, url, score}]], "latency_ms": {p50, p99}}')
    .action(async (o: { index: string; vector: string; k: number; exact?: boolean; repeat: number; bundle?: string; logitScale?: number; json?: boolean }) => {
      const { runSearch, formatSearch } = await import('./search-cli.ts');
      const out = await runSearch({
        indexes: o.index.split(',').map((s) => s.trim()).filter(Boolean),
        vectorFile: o.vector,
        k: o.k,
        exact: o.exact === true,
        repeat: o.repeat,
        // The index's recorded logit_scale applies unless a flag overrides it.
        logitScale: await logitScaleFrom(o, false),
      });
      process.stdout.write(`${o.json ? JSON.stringify(out) : formatSearch(out)}\n`);
    });
}
