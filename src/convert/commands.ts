import { Option, type Command } from 'commander';

export function registerConvertCommands(program: Command): void {
  program
    .command('convert')
    .description('convert upstream FROMAGe checkpoints (hub folder layout) into a model bundle')
    .requiredOption('--opt <dir>', 'facebook/opt-6.7b folder (config.json, vocab.json, merges.txt, pytorch_model*.bin)')
    .requiredOption('--clip <dir>', 'openai/clip-vit-large-patch14 folder (config.json, preprocessor_config.json, model.safetensors or pytorch_model.bin)')
    .requiredOption('--fromage <dir>', 'FROMAGe folder (model_args.json, pretrained_ckpt.pth.tar)')
    .requiredOption('--out <dir>', 'bundle directory to create (must not exist or be empty)')
    .addOption(
      new Option('--weights <dtype>', 'weight storage: fp32 (exact), fp16 (CUDA), int8 or int4 (MatMulNBits; CPU and small GPUs)')
        .choices(['fp32', 'fp16', 'int8', 'int4'])
        .default('int4'),
    )
    .option('--block-size <n>', 'MatMulNBits block size for int8/int4 (power of two >= 16)', (v) => Number.parseInt(v, 10), 32)
    .addOption(
      new Option('--accuracy-level <n>', 'MatMulNBits accuracy_level: 4 = int8 activations (fast on CPU), 0 = float32 compute (exact; very slow for int8 on CPU)')
        .choices(['0', '4'])
        .default('4'),
    )
    .option('--prepare', "then save the decoder with onnxruntime's packed weights for this CPU (int4/int8; see `fromage prepare`)")
    .action(
      async (o: { opt: string; clip: string; fromage: string; out: string; weights: 'fp32' | 'fp16' | 'int8' | 'int4'; blockSize: number; accuracyLevel: '0' | '4'; prepare?: boolean }) => {
        const { convertBundle } = await import('./convert.ts');
        const started = Date.now();
        const r = await convertBundle({ optDir: o.opt, clipDir: o.clip, fromageDir: o.fromage, outDir: o.out, weights: o.weights, blockSize: o.blockSize, accuracyLevel: o.accuracyLevel === '4' ? 4 : 0 });
        const secs = ((Date.now() - started) / 1000).toFixed(1);
        process.stdout.write(`wrote bundle ${r.manifest.id} (${r.manifest.weights.dtype}) to ${r.outDir} in ${secs}s\n`);
        const { benefitsFromPreparing } = await import('../model/prepared-decoder.ts');
        if (o.prepare && benefitsFromPreparing(r.manifest)) await runPrepare(r.outDir, { force: true });
      },
    );

  program
    .command('prepare')
    .description("save a bundle's decoder with onnxruntime's packed weights for this CPU, so that starts map them instead of building them (int4/int8 bundles)")
    .argument('[bundle]', 'bundle directory (default: FROMAGE_BUNDLE)')
    .option('--force', 'rebuild even if this CPU already has a prepared copy (or a refusal)')
    .option('--threads <n>', 'onnxruntime intra-op threads (default: FROMAGE_THREADS)', (v) => Number.parseInt(v, 10))
    .action(async (bundle: string | undefined, o: { force?: boolean; threads?: number }) => {
      const config = (await import('../config.ts')).loadConfig();
      await runPrepare(bundle ?? config.FROMAGE_BUNDLE, { force: o.force ?? false, threads: o.threads ?? (config.FROMAGE_THREADS || undefined) });
    });

  program
    .command('inspect')
    .description("print a bundle's manifest summary and each graph's inputs and outputs")
    .argument('[bundle]', 'bundle directory (with fromage.json; default: FROMAGE_BUNDLE)')
    .action(async (bundle: string | undefined) => {
      const { inspectBundle, formatBundleReport } = await import('./inspect.ts');
      const dir = bundle ?? (await import('../config.ts')).loadConfig().FROMAGE_BUNDLE;
      process.stdout.write(`${formatBundleReport(await inspectBundle(dir))}\n`);
    });
}

async function runPrepare(bundleDir: string, o: { force: boolean; threads?: number }): Promise<void> {
  const { readManifest } = await import('../model/bundle.ts');
  const { prepareDecoder, benefitsFromPreparing } = await import('../model/prepared-decoder.ts');
  const manifest = await readManifest(bundleDir);
  if (!benefitsFromPreparing(manifest)) {
    process.stdout.write(`the bundle's weights are ${manifest.weights.dtype}: nothing to prepare (only int4/int8 decoders have packed weights worth saving)\n`);
    return;
  }
  const out = (line: string) => process.stderr.write(`prepare: ${line}\n`);
  const r = await prepareDecoder(bundleDir, manifest, { force: o.force, threads: o.threads, log: out });
  const secs = r.seconds.toFixed(1);
  if (r.status === 'ok') process.stdout.write(`prepared the decoder for this CPU in ${r.dir} (${((r.bytes ?? 0) / 2 ** 30).toFixed(1)} GiB, ${secs}s): starts now map its packed weights\n`);
  else if (r.status === 'kept') process.stdout.write(`this CPU already has ${r.reason ? `a refusal (${r.reason})` : 'a prepared decoder'} in ${r.dir}; --force rebuilds it\n`);
  else process.stdout.write(`not prepared (${r.reason}); the bot loads the bundle's decoder as before\n`);
}
