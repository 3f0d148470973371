/**
 * The prepared decoder (src/model/prepared-decoder.ts): saved with onnxruntime's packed weights,
 * mapped at load only when one decoder call reproduces the bundle's outputs bit for bit.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attr, MS_DOMAIN, OnnxGraphWriter } from '../../src/convert/onnx/graph-builder.ts';
import { quantizeMatMulNBits } from '../../src/convert/quantize.ts';
import { openBundle, readManifest } from '../../src/model/bundle.ts';
import type { Manifest } from '../../src/model/manifest.ts';
import { openPreparedDecoder, prepareDecoder, preparedDir, probeHash, probeSpec, readPreparedInfo } from '../../src/model/prepared-decoder.ts';
import { createSession } from '../../src/model/session.ts';
import { xorshift32 } from '../../bench/xorshift.ts';
import { convertFixtureBundleInto } from './helpers.ts';

const HIDDEN = 1024;
let tmp: string;

/**
 * A stand-in decoder with the bundle's input names: one int4 MatMulNBits over the embeddings
 * (accuracy level 4, as the converter writes). Large enough that its packed weight is saved
 * and restored correctly by onnxruntime 1.30.
 */
async function fakeDecoderBundle(dir: string): Promise<Manifest> {
  const g = await OnnxGraphWriter.create(join(dir, 'decoder.onnx'), { name: 'fake_decoder' });
  const x = g.input('inputs_embeds', 'FLOAT', [1, 'T', HIDDEN]);
  g.input('attention_mask', 'INT64', [1, 'T']);
  g.input('position_ids', 'INT64', [1, 'T']);
  g.input('num_logits_to_keep', 'INT64', []);
  g.input('past_key_values.0.key', 'FLOAT', [1, 1, 'P', 1]);
  g.input('past_key_values.0.value', 'FLOAT', [1, 1, 'P', 1]);
  const next = xorshift32(7);
  const w = Float32Array.from({ length: HIDDEN * HIDDEN }, () => (next() - 0.5) * 0.04);
  const q = quantizeMatMulNBits(w, HIDDEN, HIDDEN, 'NK', { bits: 4, blockSize: 32 });
  const inputs = [x, await g.weight('w.qweight', 'UINT8', q.bShape, q.B), await g.weight('w.scales', 'FLOAT', q.scalesShape, new Uint8Array(q.scales.buffer))];
  if (q.zeroPoints) inputs.push(await g.weight('w.zero_points', 'UINT8', [q.zeroPoints.length], q.zeroPoints));
  const y = g.op('MatMulNBits', inputs, { K: attr.int(HIDDEN), N: attr.int(HIDDEN), bits: attr.int(4), block_size: attr.int(32), accuracy_level: attr.int(4) }, { domain: MS_DOMAIN });
  g.output('logits', 'FLOAT', [1, 'T', HIDDEN], y);
  await g.finish({});
  return {
    id: `fake-${dir.length}`,
    graphs: { decoder: 'decoder.onnx' },
    model: { hidden_size: HIDDEN, num_layers: 1, num_heads: 1, head_dim: 1 },
    weights: { dtype: 'int4' },
  } as unknown as Manifest;
}

async function logitsOf(session: ort.InferenceSession, seed: number): Promise<Float32Array> {
  const next = xorshift32(seed);
  const T = 3;
  const out = await session.run({
    inputs_embeds: new ort.Tensor('float32', Float32Array.from({ length: T * HIDDEN }, () => next() - 0.5), [1, T, HIDDEN]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(T).fill(1n), [1, T]),
    position_ids: new ort.Tensor('int64', BigInt64Array.of(0n, 1n, 2n), [1, T]),
    num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(1n), []),
    'past_key_values.0.key': new ort.Tensor('float32', new Float32Array(0), [1, 1, 0, 1]),
    'past_key_values.0.value': new ort.Tensor('float32', new Float32Array(0), [1, 1, 0, 1]),
  });
  return out.logits.data as Float32Array;
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'fromage-prepared-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('prepared decoder', () => {
  it('is saved, checked, and then mapped at load with bit-identical outputs', async () => {
    const dir = join(tmp, 'fake');
    await (await import('node:fs/promises')).mkdir(dir);
    const manifest = await fakeDecoderBundle(dir);
    const r = await prepareDecoder(dir, manifest, { threads: 1 });
    expect(r.status, r.reason).toBe('ok');
    const info = await readPreparedInfo(r.dir);
    expect(info?.status).toBe('ok');
    expect(Object.keys(info?.files ?? {})).toEqual(['decoder.onnx', 'decoder.onnx.data']);
    expect(r.dir).toBe(preparedDir(dir, manifest).dir);

    const warnings: string[] = [];
    const prepared = await openPreparedDecoder(dir, manifest, { threads: 1 }, (m) => warnings.push(m));
    expect(prepared.session).toBeDefined();
    const normal = (await createSession(join(dir, 'decoder.onnx'), { threads: 1 })).session;
    try {
      expect(await probeHash(prepared.session!, probeSpec(manifest))).toBe(await probeHash(normal, probeSpec(manifest)));
      expect(Buffer.from((await logitsOf(prepared.session!, 3)).buffer).equals(Buffer.from((await logitsOf(normal, 3)).buffer))).toBe(true);
    } finally {
      await prepared.session?.release();
      await normal.release();
    }
    expect(warnings).toEqual([]);

    // Kept on a second run; rebuilt with force.
    expect((await prepareDecoder(dir, manifest, { threads: 1 })).status).toBe('kept');
    expect((await prepareDecoder(dir, manifest, { threads: 1, force: true })).status).toBe('ok');
  });

  it('a damaged or different copy is not used: the caller is told what to run and loads the bundle', async () => {
    const dir = join(tmp, 'damaged');
    await (await import('node:fs/promises')).mkdir(dir);
    const manifest = await fakeDecoderBundle(dir);
    const r = await prepareDecoder(dir, manifest, { threads: 1 });
    expect(r.status).toBe('ok');
    const infoFile = join(r.dir, 'prepared.json');

    // A probe that the copy does not reproduce (as a wrong restore would give).
    const info = JSON.parse(await readFile(infoFile, 'utf8')) as { probe: string };
    await writeFile(infoFile, JSON.stringify({ ...info, probe: '0'.repeat(64) }));
    const warnings: string[] = [];
    const mismatch = await openPreparedDecoder(dir, manifest, { threads: 1 }, (m) => warnings.push(m));
    expect(mismatch.session).toBeUndefined();
    expect(warnings.join('\n')).toMatch(/different outputs.*fromage prepare --force/);

    // A truncated weight file is never mapped.
    await writeFile(infoFile, JSON.stringify(info));
    await truncate(join(r.dir, 'decoder.onnx.data'), 100);
    warnings.length = 0;
    const damaged = await openPreparedDecoder(dir, manifest, { threads: 1 }, (m) => warnings.push(m));
    expect(damaged).toMatchObject({ why: 'damaged' });
    expect(warnings.join('\n')).toMatch(/damaged \(decoder\.onnx\.data.*fromage prepare --force/);

    // On CUDA the copy (CPU packing) is not considered.
    expect(await openPreparedDecoder(dir, manifest, { device: 'cuda' }, () => {})).toMatchObject({ why: 'device' });
  });

  it('the fixture int4 bundle answers the same with or without preparing (onnxruntime 1.30 refuses its tiny weights, remembered)', async () => {
    const dir = join(tmp, 'fixture-int4');
    await convertFixtureBundleInto(dir, 'vis1', 'int4');
    const manifest = await readManifest(dir);
    const before = await openBundle(dir, { threads: 1 });
    const spec = probeSpec(manifest);
    const expected = await probeHash(before.decoder, spec);
    await before.release();

    const r = await prepareDecoder(dir, manifest, { threads: 1 });
    expect(['ok', 'refused']).toContain(r.status);
    if (r.status === 'refused') {
      expect(r.reason).toMatch(/onnxruntime/);
      // Remembered: the next prepare does not try again, and loading uses the bundle's decoder.
      expect(await prepareDecoder(dir, manifest, { threads: 1 })).toMatchObject({ status: 'kept', reason: r.reason });
      expect(existsSync(join(r.dir, 'decoder.onnx.data'))).toBe(false);
    }
    const after = await openBundle(dir, { threads: 1 });
    try {
      expect(after.preparedDecoder).toBe(r.status === 'ok' ? r.dir : undefined);
      expect(await probeHash(after.decoder, spec)).toBe(expected);
    } finally {
      await after.release();
    }
  });

  it('`fromage prepare` says when a bundle has nothing to prepare', async () => {
    const dir = join(tmp, 'fixture-fp32');
    await convertFixtureBundleInto(dir, 'vis1', 'fp32');
    const { stdout } = await promisify(execFile)(process.execPath, [join(import.meta.dirname, '../../bin/fromage.js'), 'prepare', dir], { cwd: tmp, timeout: 60_000 });
    expect(stdout).toMatch(/weights are fp32: nothing to prepare/);
  });
});
