import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeVarint } from '../../src/convert/onnx/protobuf.ts';
import { OnnxGraphWriter, attr } from '../../src/convert/onnx/graph-builder.ts';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('protobuf varints', () => {
  it('encodes unsigned and negative int64 values', () => {
    expect([...encodeVarint(1)]).toEqual([1]);
    expect([...encodeVarint(300)]).toEqual([0xac, 0x02]);
    expect([...encodeVarint(-1)]).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
  });
});

describe('OnnxGraphWriter', () => {
  it('writes a model with external and inline weights that onnxruntime loads and runs', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onnx-writer-'));
    dirs.push(dir);
    const path = join(dir, 'm.onnx');
    const g = await OnnxGraphWriter.create(path, { name: 'test', inlineLimit: 64 });
    const x = g.input('x', 'FLOAT', ['batch', 3]);
    // w: [3, 40] (480 bytes -> external), b: [40] (160 bytes -> external), scale inline.
    const w = new Float32Array(3 * 40).map((_, i) => (i % 7) - 3);
    const b = new Float32Array(40).map((_, i) => i / 10);
    const wn = await g.weight('w', 'FLOAT', [3, 40], new Uint8Array(w.buffer));
    const bn = await g.weight('b', 'FLOAT', [40], new Uint8Array(b.buffer));
    const y = g.op('Add', [g.op('MatMul', [x, wn]), bn]);
    const s = g.op('ReduceSum', [y, g.constInt64([1])], { keepdims: attr.int(0) });
    g.output('y', 'FLOAT', ['batch', 40], y);
    g.output('s', 'FLOAT', ['batch'], s);
    await g.finish({ purpose: 'test' });
    expect((await stat(`${path}.data`)).size).toBeGreaterThan(4096);

    const session = await ort.InferenceSession.create(path);
    expect(session.inputNames).toEqual(['x']);
    expect(session.outputNames).toEqual(['y', 's']);
    const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([1, 2, 3]), [1, 3]) });
    const yv = out.y.data as Float32Array;
    for (let j = 0; j < 40; j++) {
      const want = w[j] * 1 + w[40 + j] * 2 + w[80 + j] * 3 + b[j];
      expect(yv[j]).toBeCloseTo(want, 5);
    }
    await session.release();
  });
});
