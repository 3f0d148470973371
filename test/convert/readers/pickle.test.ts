import { copyFile, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CheckpointError } from '../../../src/convert/readers/errors.ts';
import { iterateFloat32Rows, numpyToFloat32 } from '../../../src/convert/readers/numpy.ts';
import {
  isLazyBytes,
  isNumpyArray,
  iterateLazyBytes,
  parsePickle,
  readLazyBytes,
  readPickleFile,
  type NumpyArray,
  type PickleValue,
} from '../../../src/convert/readers/pickle.ts';
import { float32ToFloat16Bits } from '../../../src/convert/quantize.ts';
import { fixture, PickleBytes, referenceTensor, tempDir } from './helpers.ts';

const INDEX_FILES = {
  vis1: fixture('fromage_model', 'cc3m_embeddings.pkl'),
  vis4: fixture('fromage_model', 'fromage_vis4', 'cc3m_embeddings.pkl'),
};

function asDict(v: PickleValue): Map<string, PickleValue> {
  expect(v).toBeInstanceOf(Map);
  return v as Map<string, PickleValue>;
}

function expectCheckpointError(fn: () => unknown, ...parts: Array<string | RegExp>): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(CheckpointError);
  for (const p of parts) expect((caught as Error).message).toMatch(p);
}

describe('cc3m_embeddings.pkl (fixture index pickles)', () => {
  for (const [variant, file] of Object.entries(INDEX_FILES)) {
    it(`${variant}: float32 (N, D) matrix matches reference index.${variant}.embeddings, inline and lazy`, async () => {
      const ref = referenceTensor(`index.${variant}.embeddings`);
      const inline = asDict(readPickleFile(file));
      const lazy = asDict(readPickleFile(file, { lazyBytesOver: 1024 }));
      const paths = inline.get('paths') as string[];
      expect(paths).toHaveLength(ref.shape[0]);
      expect(paths[1]).toBe('http://127.0.0.1:PORT/img/gone_00001.png');
      expect(lazy.get('paths')).toEqual(paths);

      const a = inline.get('embeddings') as NumpyArray;
      const b = lazy.get('embeddings') as NumpyArray;
      expect(isNumpyArray(a) && isNumpyArray(b)).toBe(true);
      expect(a.dtype).toBe('<f4');
      expect(a.shape).toEqual(ref.shape);
      expect(a.data).toBeInstanceOf(Uint8Array);
      expect(isLazyBytes(b.data)).toBe(true);
      expect(await numpyToFloat32(a, file)).toEqual(ref.data);
      expect(await numpyToFloat32(b, file)).toEqual(ref.data);
    });
  }

  it('streams a lazy matrix in whole-row chunks', async () => {
    const file = INDEX_FILES.vis1;
    const ref = referenceTensor('index.vis1.embeddings');
    const emb = asDict(readPickleFile(file, { lazyBytesOver: 0 })).get('embeddings') as NumpyArray;
    const chunks: number[] = [];
    const out = new Float32Array(ref.data.length);
    for await (const { firstRow, rows, data } of iterateFloat32Rows(emb, file, 10)) {
      chunks.push(rows);
      out.set(data, firstRow * 16);
    }
    expect(chunks).toEqual([10, 10, 10, 10, 10, 10, 4]);
    expect(out).toEqual(ref.data);
    // Raw chunk iteration respects the alignment unit.
    const sizes: number[] = [];
    if (!isLazyBytes(emb.data)) throw new Error('expected lazy');
    for await (const c of iterateLazyBytes(emb.data, 1000, 64)) sizes.push(c.length);
    expect(sizes.every((s, i) => s % 64 === 0 || i === sizes.length - 1)).toBe(true);
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(4096);
    expect((await readLazyBytes(emb.data)).length).toBe(4096);
  });

  for (const variant of ['vis1', 'vis4'] as const) {
    it(`${variant}: list-of-rows variant concatenates to the same matrix`, async () => {
      const file = fixture('variants', 'index', variant, 'cc3m_embeddings_list.pkl');
      const ref = referenceTensor(`index.${variant}.embeddings`);
      const rows = asDict(readPickleFile(file, { lazyBytesOver: 1 << 20 })).get('embeddings') as NumpyArray[];
      expect(rows).toHaveLength(ref.shape[0]);
      const out = new Float32Array(ref.data.length);
      for (let i = 0; i < rows.length; i++) {
        expect(rows[i].shape).toEqual([ref.shape[1]]);
        out.set(await numpyToFloat32(rows[i], file), i * ref.shape[1]);
      }
      expect(out).toEqual(ref.data);
    });

    it(`${variant}: float16 variant is the reference rounded to fp16 (bit-exact)`, async () => {
      const file = fixture('variants', 'index', variant, 'cc3m_embeddings_fp16.pkl');
      const ref = referenceTensor(`index.${variant}.embeddings`);
      const emb = asDict(readPickleFile(file, { lazyBytesOver: 100 })).get('embeddings') as NumpyArray;
      expect(emb.dtype).toBe('<f2');
      if (!isLazyBytes(emb.data)) throw new Error('expected lazy');
      const bits = new Uint16Array((await readLazyBytes(emb.data)).slice().buffer);
      expect(Array.from(bits)).toEqual(Array.from(ref.data, (x) => float32ToFloat16Bits(x)));
      const up = await numpyToFloat32(emb, file);
      for (let i = 0; i < up.length; i++) expect(float32ToFloat16Bits(up[i])).toBe(bits[i]);
    });
  }
});

describe('safe pickle reader: refuses anything but data', () => {
  it('refuses GLOBAL os.system naming the file, the global and the risk', async () => {
    const evil = new PickleBytes().proto(2).global('os', 'system').str('echo pwned').op(0x85, 0x52, 0x2e).bytes();
    expectCheckpointError(() => parsePickle(evil, 'evil.pkl'), 'evil.pkl', "'os.system'", /malicious/);
    const dir = await tempDir();
    const path = join(dir, 'evil.pkl');
    await writeFile(path, evil);
    expectCheckpointError(() => readPickleFile(path), path, 'os.system');
  });

  it('refuses STACK_GLOBAL builtins.eval and other non-allowlisted globals', () => {
    const evil = new PickleBytes().proto(4).str('builtins').str('eval').op(0x93).str('1+1').op(0x85, 0x52, 0x2e).bytes();
    expectCheckpointError(() => parsePickle(evil, 'x.pkl'), 'builtins.eval');
    const sub = new PickleBytes().proto(2).global('subprocess', 'Popen').op(0x2e).bytes();
    expectCheckpointError(() => parsePickle(sub, 'x.pkl'), 'subprocess.Popen');
  });

  it('refuses calling an allowlisted type tag, and INST/OBJ/EXT opcodes', () => {
    const call = new PickleBytes().proto(2).global('torch', 'FloatStorage').op(0x29, 0x52, 0x2e).bytes();
    expectCheckpointError(() => parsePickle(call, 'x.pkl'), 'torch.FloatStorage');
    const inst = new PickleBytes().op(0x28).text('i').text('os\nsystem\n').op(0x2e).bytes();
    expectCheckpointError(() => parsePickle(inst, 'x.pkl'), /allowlist/);
    const ext = new PickleBytes().proto(2).op(0x82, 1, 0x2e).bytes();
    expectCheckpointError(() => parsePickle(ext, 'x.pkl'), /allowlist/);
  });

  it('rejects unknown opcodes, bad memo references, stack underflow and missing STOP', () => {
    expectCheckpointError(() => parsePickle(Uint8Array.of(0x80, 4, 0xff), 'x.pkl'), 'x.pkl', 'unknown pickle opcode 0xff');
    expectCheckpointError(() => parsePickle(Uint8Array.of(0x80, 2, 0x68, 5, 0x2e), 'x.pkl'), 'memo index 5');
    expectCheckpointError(() => parsePickle(Uint8Array.of(0x80, 2, 0x52, 0x2e), 'x.pkl'), 'underflow');
    expectCheckpointError(() => parsePickle(Uint8Array.of(0x80, 2, 0x4e), 'x.pkl'), 'truncated');
    expectCheckpointError(() => parsePickle(new Uint8Array(0), 'x.pkl'), 'truncated');
    expectCheckpointError(() => parsePickle(Uint8Array.of(0x80, 9, 0x4e, 0x2e), 'x.pkl'), 'protocol 9');
  });

  it('rejects persistent ids outside a torch checkpoint, and out-of-band buffers', () => {
    const pid = new PickleBytes().proto(2).str('storage').op(0x51, 0x2e).bytes();
    expectCheckpointError(() => parsePickle(pid, 'x.pkl'), 'persistent id');
    expectCheckpointError(() => parsePickle(Uint8Array.of(0x80, 5, 0x97, 0x2e), 'x.pkl'), 'out-of-band');
  });

  it('reports a truncated index file by name', async () => {
    const dir = await tempDir();
    const path = join(dir, 'cc3m_embeddings.pkl');
    await copyFile(INDEX_FILES.vis1, path);
    await truncate(path, 3000);
    expectCheckpointError(() => readPickleFile(path, { lazyBytesOver: 1 << 20 }), path, 'truncated');
    await truncate(path, 1000);
    expectCheckpointError(() => readPickleFile(path), path, 'truncated');
  });

  it('refuses numpy object arrays', () => {
    const p = new PickleBytes()
      .proto(2)
      .global('numpy.core.multiarray', '_reconstruct')
      .global('numpy', 'ndarray')
      .op(0x4b, 0, 0x85, 0x43, 1, 0x62, 0x87, 0x52) // _reconstruct(ndarray, (0,), b'b')
      .op(0x28, 0x4b, 1, 0x4b, 1, 0x85)
      .global('numpy', 'dtype')
      .str('O8')
      .op(0x89, 0x88, 0x87, 0x52)
      .op(0x89, 0x5d, 0x4e, 0x61, 0x74, 0x62, 0x2e) // (1, (1,), dtype, False, [None]) BUILD
      .bytes();
    expectCheckpointError(() => parsePickle(p, 'obj.pkl'), 'Python objects');
  });
});

describe('safe pickle reader: data opcodes', () => {
  it('decodes protocol-2 numpy arrays whose bytes go through _codecs.encode(latin1)', async () => {
    const values = Float32Array.of(1.5, -2, 3.25, 1e-3);
    const latin = String.fromCharCode(...new Uint8Array(values.buffer));
    const p = new PickleBytes()
      .proto(2)
      .global('numpy.core.multiarray', '_reconstruct')
      .global('numpy', 'ndarray')
      .op(0x4b, 0, 0x85)
      .global('_codecs', 'encode')
      .str('b')
      .str('latin1')
      .op(0x86, 0x52, 0x87, 0x52) // _reconstruct(ndarray, (0,), encode('b','latin1'))
      .op(0x28, 0x4b, 1, 0x4b, 2, 0x4b, 2, 0x86) // (1, (2, 2),
      .global('numpy', 'dtype')
      .str('f4')
      .op(0x89, 0x88, 0x87, 0x52) // dtype('f4', False, True)
      .op(0x28, 0x4b, 3)
      .str('<')
      .op(0x4e, 0x4e, 0x4e)
      .int(-1)
      .int(-1)
      .op(0x4b, 0, 0x74, 0x62) // BUILD dtype state
      .op(0x89)
      .global('_codecs', 'encode')
      .str(latin)
      .str('latin1')
      .op(0x86, 0x52, 0x74, 0x62, 0x2e)
      .bytes();
    const arr = parsePickle(p, 'p2.pkl') as NumpyArray;
    expect(arr.dtype).toBe('<f4');
    expect(arr.shape).toEqual([2, 2]);
    expect(await numpyToFloat32(arr, 'p2.pkl')).toEqual(values);
  });

  it('accepts Python 2 numpy pickles whose raw data is a latin-1 str', async () => {
    const values = Float32Array.of(0.25, -8);
    const raw = new Uint8Array(values.buffer);
    const p = new PickleBytes()
      .proto(2)
      .global('numpy.core.multiarray', '_reconstruct')
      .global('numpy', 'ndarray')
      .op(0x4b, 0, 0x85, 0x55, 1, 0x62, 0x87, 0x52) // _reconstruct(ndarray, (0,), 'b')
      .op(0x28, 0x4b, 1, 0x4b, 2, 0x85)
      .global('numpy', 'dtype')
      .op(0x55, 2)
      .text('f4')
      .op(0x4b, 0, 0x4b, 1, 0x87, 0x52) // dtype('f4', 0, 1)
      .op(0x28, 0x4b, 3, 0x55, 1)
      .text('<')
      .op(0x4e, 0x4e, 0x4e)
      .int(-1)
      .int(-1)
      .op(0x4b, 0, 0x74, 0x62)
      .op(0x89, 0x55, raw.length, ...raw, 0x74, 0x62, 0x2e) // (1, (2,), dtype, False, '<8 bytes>')
      .bytes();
    const arr = parsePickle(p, 'py2.pkl') as NumpyArray;
    expect(arr.dtype).toBe('<f4');
    expect(await numpyToFloat32(arr, 'py2.pkl')).toEqual(values);
  });

  it('decodes protocol-5 numpy _frombuffer over BYTEARRAY8, lazily from a file', async () => {
    const values = Float32Array.from({ length: 300 }, (_, i) => i / 7);
    const q = new PickleBytes()
      .proto(5)
      .global('numpy.core.numeric', '_frombuffer')
      .op(0x28)
      .op(0x96)
      .u64(values.byteLength)
      .op(...new Uint8Array(values.buffer))
      .global('numpy', 'dtype')
      .str('f4')
      .op(0x89, 0x88, 0x87, 0x52)
      .op(0x4b, 3, 0x4b, 100, 0x86)
      .str('C')
      .op(0x74, 0x52, 0x2e)
      .bytes();
    const dir = await tempDir();
    const path = join(dir, 'p5.pkl');
    await writeFile(path, q);
    const arr = readPickleFile(path, { lazyBytesOver: 64 }) as NumpyArray;
    expect(arr.shape).toEqual([3, 100]);
    expect(isLazyBytes(arr.data)).toBe(true);
    expect(await numpyToFloat32(arr, path)).toEqual(values);
  });

  it('decodes ints, longs, floats, sets, tuples vs lists, protocol-0 text opcodes and POP/DUP', () => {
    const p = new PickleBytes()
      .proto(4)
      .op(0x28) // MARK for the outer list
      .op(0x8a, 2, 0xff, 0x7f) // LONG1 32767
      .op(0x8a, 1, 0xff) // LONG1 -1
      .op(0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1) // LONG1 2^64
      .op(0x47, 0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18) // BINFLOAT pi
      .text('I42\n')
      .text('I01\n')
      .text('L-7L\n')
      .text('F0.5\n')
      .text('V\\u00e9t\\u00e9\n')
      .op(0x8f, 0x28, 0x4b, 1, 0x4b, 2, 0x90) // EMPTY_SET ADDITEMS
      .op(0x28, 0x4b, 3, 0x91) // FROZENSET
      .op(0x4b, 9, 0x4b, 8, 0x86) // (9, 8)
      .op(0x5d, 0x4b, 5, 0x61) // [5]
      .op(0x4b, 1, 0x32, 0x86) // DUP -> (1, 1)
      .op(0x4b, 99, 0x30) // POP
      .op(0x4e, 0x70).text('7\n').op(0x30) // PUT 7 then pop
      .op(0x67).text('7\n') // GET 7 -> None
      .op(0x6c) // LIST
      .op(0x2e)
      .bytes();
    const v = parsePickle(p, 'x.pkl') as PickleValue[];
    expect(v.slice(0, 9)).toEqual([32767, -1, 2n ** 64n, Math.PI, 42, true, -7, 0.5, 'été']);
    expect(v[9]).toEqual({ kind: 'set', frozen: false, items: [1, 2] });
    expect(v[10]).toEqual({ kind: 'set', frozen: true, items: [3] });
    expect(Object.isFrozen(v[11])).toBe(true);
    expect(v[11]).toEqual([9, 8]);
    expect(Object.isFrozen(v[12])).toBe(false);
    expect(v[12]).toEqual([5]);
    expect(v[13]).toEqual([1, 1]);
    expect(v[14]).toBeNull();
    expect(v).toHaveLength(15);
  });

  it('reads strings and lazy payloads across its 4 MB read window', async () => {
    const big = new Uint8Array(3 << 20);
    for (let i = 0; i < big.length; i += 4096) big[i] = (i >> 12) & 0xff;
    const b = new PickleBytes().proto(4).op(0x7d, 0x28).str('paths').op(0x5d, 0x28);
    const urls: string[] = [];
    for (let i = 0; i < 90_000; i++) {
      const u = `https://example.com/images/${i}/photo_${'x'.repeat(i % 13)}.jpg`;
      urls.push(u);
      b.str(u).op(0x94);
    }
    b.op(0x65).str('blob').binbytes8(big).str('tail').str('after the blob ✓').op(0x75, 0x2e);
    const dir = await tempDir();
    const path = join(dir, 'big.pkl');
    await writeFile(path, b.bytes());
    const d = asDict(readPickleFile(path, { lazyBytesOver: 1 << 20 }));
    expect(d.get('paths')).toEqual(urls);
    expect(d.get('tail')).toBe('after the blob ✓');
    const blob = d.get('blob') as PickleValue;
    if (!isLazyBytes(blob)) throw new Error('expected lazy bytes');
    expect(blob.length).toBe(big.length);
    const file = await readFile(path);
    expect(file.subarray(blob.offset, blob.offset + 8)).toEqual(Buffer.from(big.subarray(0, 8)));
    expect(Buffer.from(await readLazyBytes(blob)).equals(Buffer.from(big))).toBe(true);
  });
});
