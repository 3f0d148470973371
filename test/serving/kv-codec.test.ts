import { describe, expect, it } from 'vitest';
import { bodyOf, decodeKvInto, encodedBytes, encodeKv, fromHalf, joinPieces, KV_CODECS, shiftedReader, toHalf } from '../../src/serving/kv-codec.ts';
import { ArrayKv, SHAPE, tokens } from './kv-fakes.ts';

describe('float16 conversion', () => {
  it('rounds to nearest even and handles the edges', () => {
    expect(toHalf(1)).toBe(0x3c00);
    expect(toHalf(-2)).toBe(0xc000);
    expect(toHalf(65504)).toBe(0x7bff);
    expect(toHalf(65520)).toBe(0x7c00); // rounds up to infinity
    expect(toHalf(1e6)).toBe(0x7c00);
    expect(toHalf(-Infinity)).toBe(0xfc00);
    expect(Number.isNaN(fromHalf(toHalf(NaN)))).toBe(true);
    expect(toHalf(-0)).toBe(0x8000);
    expect(toHalf(2 ** -24)).toBe(1); // smallest subnormal
    expect(toHalf(2 ** -26)).toBe(0);
    expect(toHalf(1 + 2 ** -11)).toBe(0x3c00); // tie: stays even
    expect(toHalf(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie: rounds up to even
    expect(toHalf(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01);
  });

  it('every finite half survives float32 and back', () => {
    const wrong: number[] = [];
    for (let h = 0; h < 65536; h++) {
      if (((h >>> 10) & 0x1f) === 0x1f && (h & 0x3ff) !== 0) continue; // NaN payloads
      if (toHalf(fromHalf(h)) !== h) wrong.push(h);
    }
    expect(wrong).toEqual([]);
  });
});

describe('kept-cache codecs', () => {
  const keys = tokens(9);
  const live = ArrayKv.forKeys(keys);

  it('sizes: fp32 4 bytes, fp16 2, int8 1 per value plus a float32 scale per row', () => {
    const values = 2 * SHAPE.layers * SHAPE.heads * 9 * SHAPE.headDim;
    expect(encodedBytes(SHAPE, 9, 'fp32')).toBe(values * 4);
    expect(encodedBytes(SHAPE, 9, 'fp16')).toBe(values * 2);
    expect(encodedBytes(SHAPE, 9, 'int8')).toBe(values + (values / SHAPE.headDim) * 4);
    for (const codec of KV_CODECS) expect(encodeKv(live, 9, codec).data.byteLength).toBe(encodedBytes(SHAPE, 9, codec));
  });

  it('fp32 is exact', () => {
    const out = new ArrayKv(SHAPE, 9);
    decodeKvInto(encodeKv(live, 9, 'fp32'), out);
    expect(out.maxDiff(live, 9)).toBe(0);
  });

  it('fp16 stays within half precision (relative 2^-11)', () => {
    const out = new ArrayKv(SHAPE, 9);
    decodeKvInto(encodeKv(live, 9, 'fp16'), out);
    for (let j = 0; j < 4; j++)
      for (let h = 0; h < 2; h++) {
        const a = live.read(j, h, 0, 9);
        const b = out.read(j, h, 0, 9);
        for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(Math.abs(a[i]) * 2 ** -11 + 2 ** -25);
      }
  });

  it('int8 stays within half a step of its row scale', () => {
    const out = new ArrayKv(SHAPE, 9);
    decodeKvInto(encodeKv(live, 9, 'int8'), out);
    for (let j = 0; j < 4; j++)
      for (let h = 0; h < 2; h++)
        for (let p = 0; p < 9; p++) {
          const a = live.read(j, h, p, p + 1);
          const b = out.read(j, h, p, p + 1);
          const scale = Math.max(...a.map(Math.abs)) / 127;
          for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(scale / 2 + 1e-7);
        }
  });

  it('int8 keeps an all-zero row at zero', () => {
    const zero = new ArrayKv(SHAPE, 3);
    zero.length = 3;
    const out = new ArrayKv(SHAPE, 3);
    decodeKvInto(encodeKv(zero, 3, 'int8'), out);
    expect(out.buffers.every((b) => b.every((v) => v === 0))).toBe(true);
  });

  it('decodes a shorter prefix without touching later positions', () => {
    for (const codec of KV_CODECS) {
      const out = new ArrayKv(SHAPE, 9);
      out.buffers.forEach((b) => b.fill(42));
      decodeKvInto(encodeKv(live, 9, codec), out, 4);
      expect(out.length).toBe(4);
      expect(out.maxDiff(live, 4)).toBeLessThan(0.05);
      expect(out.read(0, 1, 4, 9).every((v) => v === 42)).toBe(true);
    }
  });

  it('extending a kept entry encodes only the new positions, byte for byte as a fresh encode', () => {
    const longer = [...keys, ...tokens(5, 1)];
    const full = ArrayKv.forKeys(longer);
    for (const codec of KV_CODECS) {
      const first = encodeKv(live, 9, codec);
      // The positions the base holds are taken from it, not read again: garbage there is never looked at.
      const reread = ArrayKv.forKeys(longer);
      for (let j = 0; j < 4; j++) for (let h = 0; h < 2; h++) reread.read(j, h, 0, 9).fill(NaN);
      const extended = encodeKv(reread, 14, codec, { kv: first, length: 9 });
      expect(Buffer.from(extended.data).equals(Buffer.from(encodeKv(full, 14, codec).data)), codec).toBe(true);
      // A base of another codec is ignored (everything is read).
      const other = encodeKv(full, 14, codec, { kv: encodeKv(live, 9, codec === 'fp32' ? 'fp16' : 'fp32'), length: 9 });
      expect(Buffer.from(other.data).equals(Buffer.from(encodeKv(full, 14, codec).data)), codec).toBe(true);
    }
  });

  it('pieces of consecutive positions lay out, joined or as file parts, exactly as one encode', () => {
    for (const codec of KV_CODECS) {
      const whole = encodeKv(live, 9, codec);
      const pieces = [encodeKv(shiftedReader(live, 0, 2), 2, codec), encodeKv(shiftedReader(live, 2, 7), 5, codec), encodeKv(shiftedReader(live, 7, 9), 2, codec)];
      expect(Buffer.from(joinPieces(pieces).data).equals(Buffer.from(whole.data)), codec).toBe(true);
      const body = bodyOf(pieces);
      expect(body.byteLength).toBe(whole.data.byteLength);
      expect(Buffer.concat(body.parts).equals(Buffer.from(whole.data)), codec).toBe(true);
      // Each piece decodes into its own place.
      const out = new ArrayKv(SHAPE, 9);
      let at = 0;
      for (const p of pieces) {
        decodeKvInto(p, out, p.length, at);
        at += p.length;
      }
      const ref = new ArrayKv(SHAPE, 9);
      decodeKvInto(whole, ref);
      expect(out.maxDiff(ref, 9), codec).toBe(0);
    }
    expect(() => bodyOf([encodeKv(live, 2, 'fp16'), encodeKv(live, 2, 'fp32')])).toThrow(/share a codec/);
  });

  it('refuses a live cache of another shape, or more positions than kept', () => {
    const kv = encodeKv(live, 9, 'fp16');
    expect(() => decodeKvInto(kv, new ArrayKv({ ...SHAPE, heads: 3 }, 9))).toThrow(/shape/);
    expect(() => decodeKvInto(kv, new ArrayKv(SHAPE, 20), 10)).toThrow(/holds 9 positions/);
    expect(() => encodeKv(live, 10, 'fp32')).toThrow(/holds 9/);
  });
});
