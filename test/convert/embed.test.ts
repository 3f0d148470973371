import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { buildEmbedGraph, EMBED_INT8_BLOCK, quantizeRowsInt8 } from '../../src/convert/graphs/embed.ts';

const dirs: string[] = [];
afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

const vocab = 50;
const hidden = 64;
const table = Float32Array.from({ length: vocab * hidden }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)) * 0.01);

async function embed(storage: 'fp32' | 'fp16' | 'int8', ids: number[]): Promise<Float32Array> {
  const dir = await mkdtemp(join(tmpdir(), 'fromage-embed-'));
  dirs.push(dir);
  const path = join(dir, 'embed.onnx');
  await buildEmbedGraph(path, table, vocab, hidden, storage);
  const session = await ort.InferenceSession.create(path);
  const out = await session.run({ input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, ids.length]) });
  await session.release();
  expect(out.inputs_embeds.dims).toEqual([1, ids.length, hidden]);
  return out.inputs_embeds.data as Float32Array;
}

describe('embed graph storage', () => {
  const ids = [0, 7, 49, 7];
  const expected = ids.flatMap((id) => [...table.subarray(id * hidden, (id + 1) * hidden)]);

  it('fp32 gathers rows exactly', async () => {
    expect([...(await embed('fp32', ids))]).toEqual(expected);
  });

  it('int8 gathers rows within half a quantization step of each block', async () => {
    const got = await embed('int8', ids);
    const { scales } = quantizeRowsInt8(table, vocab, hidden);
    for (let t = 0; t < ids.length; t++)
      for (let j = 0; j < hidden; j++) {
        const scale = scales[ids[t] * (hidden / EMBED_INT8_BLOCK) + Math.floor(j / EMBED_INT8_BLOCK)];
        expect(Math.abs(got[t * hidden + j] - expected[t * hidden + j])).toBeLessThanOrEqual(scale / 2 + 1e-7);
      }
  });

  it('fp16 stays within fp16 rounding', async () => {
    const got = await embed('fp16', ids);
    for (let i = 0; i < got.length; i++) expect(Math.abs(got[i] - expected[i])).toBeLessThanOrEqual(Math.abs(expected[i]) * 1e-3 + 1e-7);
  });
});
