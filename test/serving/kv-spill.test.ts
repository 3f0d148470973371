import { mkdtemp, readdir, readFile, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { encodedBytes } from '../../src/serving/kv-codec.ts';
import { bundleTag, KvSpill, nodeSpillFs, type SpillFs } from '../../src/serving/kv-spill.ts';
import type { PositionKey } from '../../src/serving/kv-types.ts';
import { createKvStore, type KvStoreOptions } from '../../src/serving/prefix-store.ts';
import { ArrayKv, SHAPE, tokens } from './kv-fakes.ts';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'fromage-kv-'));
  dirs.push(d);
  return d;
}

const ENTRY = encodedBytes(SHAPE, 10, 'fp32') + 10 * 8 + 256;

function storeOn(dir: string, more: Partial<KvStoreOptions> & { bundleId?: string; diskBytes?: number; fs?: SpillFs } = {}) {
  const warnings: string[] = [];
  const store = createKvStore({
    budgetBytes: ENTRY, // one entry of 10 positions in memory
    codec: 'fp32',
    warn: (m) => warnings.push(m),
    ...more,
    spill: { dir: join(dir, 'kv'), budgetBytes: more.diskBytes ?? 1 << 20, bundleId: more.bundleId ?? 'bundle-one', fs: more.fs },
  });
  return { store, warnings };
}

async function copied(store: ReturnType<typeof createKvStore>, keys: PositionKey[]): Promise<{ length: number; live: ArrayKv } | undefined> {
  const match = await store.match(keys, keys.length);
  if (!match) return undefined;
  const live = new ArrayKv(SHAPE, keys.length);
  await match.copyInto(live);
  return { length: match.length, live };
}

async function kvFiles(dir: string): Promise<string[]> {
  return (await readdir(join(dir, 'kv'))).filter((n) => n.endsWith('.kv')).sort();
}

describe('disk spill', () => {
  it('an evicted entry is written, then read back instead of prefilled', async () => {
    const dir = await tempDir();
    const { store } = storeOn(dir);
    const [a, b] = [tokens(10, 1), tokens(10, 2)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b)); // evicts a, written ahead of it
    await store.flush();
    expect(store.stats()).toMatchObject({ evictions: 1, spillWrites: 2, diskEntries: 2 });
    expect(await kvFiles(dir)).toHaveLength(2);
    const got = await copied(store, a);
    expect(got?.length).toBe(10);
    expect(got!.live.maxDiff(ArrayKv.forKeys(a), 10)).toBe(0);
    expect(store.stats().spillReads).toBe(1);
    // Read back into memory (b is evicted in turn).
    expect(store.stats().entries).toBe(1);
    await store.close();
  });

  it('an entry kept in pieces (a dialogue) goes to disk and comes back whole', async () => {
    const dir = await tempDir();
    for (const codec of ['fp32', 'fp16', 'int8'] as const) {
      const first = storeOn(dir, { codec, budgetBytes: 1 << 20, bundleId: codec }).store;
      let keys: number[] = [2];
      for (let turn = 0; turn < 5; turn++) {
        keys = [...keys, ...tokens(4, turn + 1)];
        await first.insert(keys, ArrayKv.forKeys(keys));
      }
      await first.close();
      const second = storeOn(dir, { codec, budgetBytes: 1 << 20, bundleId: codec }).store;
      const got = await copied(second, [...keys, 1]);
      expect(got?.length, codec).toBe(keys.length);
      expect(second.stats().spillReads).toBe(1);
      expect(got!.live.maxDiff(ArrayKv.forKeys(keys), keys.length), codec).toBeLessThan(codec === 'fp32' ? 1e-12 : codec === 'fp16' ? 8 * 2 ** -11 : 0.05);
      await second.close();
    }
  });

  it('makes room before reading an entry back: what is kept plus what is read stays within the budget', async () => {
    const dir = await tempDir();
    let keptWhileReading = -1;
    const fs: SpillFs = {
      ...nodeSpillFs,
      read: async (path, position, length) => {
        if (length >= ENTRY / 2) keptWhileReading = Math.max(keptWhileReading, store.stats().bytes);
        return nodeSpillFs.read(path, position, length);
      },
    };
    const { store } = storeOn(dir, { fs });
    const [a, b] = [tokens(10, 1), tokens(10, 2)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b)); // evicts a to disk
    await store.flush();
    expect((await copied(store, a))?.length).toBe(10);
    expect(store.stats().spillReads).toBe(1);
    expect(keptWhileReading).toBe(0); // b went before a's body was read, not after
    await store.close();
  });

  it('survives a restart: a new store on the same directory finds what close() wrote', async () => {
    const dir = await tempDir();
    const first = storeOn(dir).store;
    const a = tokens(10, 1);
    await first.insert(a, ArrayKv.forKeys(a));
    await first.close();
    expect(first.stats().spillWrites).toBe(1);
    const second = storeOn(dir).store;
    const turn2 = [...a, ...tokens(3, 9)];
    const got = await copied(second, turn2);
    expect(got?.length).toBe(10);
    expect(got!.live.maxDiff(ArrayKv.forKeys(turn2), 10)).toBe(0);
    expect(second.stats()).toMatchObject({ spillReads: 1, reusedPositions: 10 });
    await second.close();
  });

  it('files stay readable after FROMAGE_KV_CODEC changes (each file names its codec)', async () => {
    const dir = await tempDir();
    const first = storeOn(dir, { codec: 'fp16' }).store;
    const a = tokens(10, 1);
    await first.insert(a, ArrayKv.forKeys(a));
    await first.close();
    const second = storeOn(dir, { codec: 'fp32' }).store;
    const got = await copied(second, a);
    expect(got?.length).toBe(10);
    expect(got!.live.maxDiff(ArrayKv.forKeys(a), 10)).toBeLessThan(8 * 2 ** -11);
    // Keeping the next turn in fp32 cannot copy fp16 bytes: everything is encoded again.
    const turn2 = [...a, ...tokens(2, 5)];
    await second.insert(turn2, ArrayKv.forKeys(turn2)); // larger than this memory budget: straight to disk
    await second.flush();
    const again = await copied(second, [...turn2, 1]);
    expect(again?.length).toBe(12);
    expect(again!.live.maxDiff(ArrayKv.forKeys(turn2), 12)).toBe(0);
    await second.close();
  });

  it('close() starts no write after closeTimeMs (a shutdown must fit a stop timeout)', async () => {
    const dir = await tempDir();
    const { store, warnings } = storeOn(dir, { budgetBytes: 1 << 20, closeTimeMs: 0, writeAheadShare: 0 });
    await store.insert(tokens(10, 1), ArrayKv.forKeys(tokens(10, 1)));
    await store.close();
    expect(await kvFiles(dir)).toEqual([]);
    expect(warnings.join('\n')).toMatch(/1 kept KV caches were not written to disk at shutdown/);
  });

  it('a longer entry replaces the files it extends', async () => {
    const dir = await tempDir();
    const spill = await KvSpill.open({ dir: join(dir, 'kv'), budgetBytes: 1 << 20, bundleId: 'b' });
    const { bodyOf, encodeKv } = await import('../../src/serving/kv-codec.ts');
    const t1 = tokens(6);
    const t2 = [...t1, ...tokens(4, 1)];
    expect(await spill.write(t1, bodyOf([encodeKv(ArrayKv.forKeys(t1), 6, 'fp16')]), 1000)).toBe(true);
    expect(await spill.write(t2, bodyOf([encodeKv(ArrayKv.forKeys(t2), 10, 'fp16')]), 2000)).toBe(true);
    expect(await kvFiles(dir)).toHaveLength(1);
    // A prefix of what is on disk needs no file of its own.
    expect(await spill.write(t1, bodyOf([encodeKv(ArrayKv.forKeys(t1), 6, 'fp16')]), 3000)).toBe(true);
    expect(spill.count).toBe(1);
    expect(spill.best([...t1, 5], 100)?.length).toBe(6);
  });

  it('keeps the disk budget, removing the least recently used files (by mtime)', async () => {
    const dir = await tempDir();
    const fileBytes = ENTRY + 300; // body + header, roughly
    const { store } = storeOn(dir, { diskBytes: 2 * fileBytes, now: () => clock });
    let clock = 1_000_000;
    const seqs = [tokens(10, 1), tokens(10, 2), tokens(10, 3), tokens(10, 4)];
    for (const s of seqs) {
      clock += 1000;
      await store.insert(s, ArrayKv.forKeys(s));
      await store.flush();
    }
    // Each was written ahead of its eviction; the budget holds two files: the oldest two went.
    expect(store.stats().diskEntries).toBe(2);
    expect(store.stats().diskBytes).toBeLessThanOrEqual(2 * fileBytes);
    const names = await kvFiles(dir);
    const mtimes = await Promise.all(names.map(async (n) => (await stat(join(dir, 'kv', n))).mtimeMs));
    expect(mtimes.sort()).toEqual([1_003_000, 1_004_000]);
    expect(await store.match(seqs[1], 10)).toBeUndefined();
    expect((await store.match(seqs[2], 10))?.length).toBe(10);
    await store.close();
  });

  it('a disk budget lowered since the files were written is kept at start, oldest files first', async () => {
    const dir = await tempDir();
    let clock = 1_000_000;
    const first = storeOn(dir, { budgetBytes: 1 << 20, now: () => clock }).store;
    const seqs = [tokens(10, 1), tokens(10, 2), tokens(10, 3)];
    for (const s of seqs) {
      clock += 1000;
      await first.insert(s, ArrayKv.forKeys(s));
    }
    await first.close();
    expect(await kvFiles(dir)).toHaveLength(3);
    // Sizes differ by a byte or two (the header's checksum digits): budget two of the largest.
    const fileBytes = Math.max(...(await Promise.all((await kvFiles(dir)).map(async (n) => (await stat(join(dir, 'kv', n))).size))));
    const { store } = storeOn(dir, { diskBytes: 2 * fileBytes });
    expect(await store.match(seqs[0], 10)).toBeUndefined();
    expect((await store.match(seqs[2], 10))?.length).toBe(10);
    expect(await kvFiles(dir)).toHaveLength(2);
    await store.close();
  });

  it('prefers a longer prefix on disk to a shorter one in memory', async () => {
    const dir = await tempDir();
    const { store } = storeOn(dir, { budgetBytes: ENTRY + 1024 });
    const a = [...tokens(3), ...tokens(7, 1)];
    const b = [...tokens(3), ...tokens(7, 2)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b)); // a goes to disk; b shares its first 3 positions
    await store.flush();
    const q = [...a, 99];
    const got = await copied(store, q);
    expect(got?.length).toBe(10);
    expect(got!.live.maxDiff(ArrayKv.forKeys(q), 10)).toBe(0);
    expect(store.stats().spillReads).toBe(1);
    await store.close();
  });

  it('a slow disk delays keeping the next cache, never piles evicted caches up in memory beside it', async () => {
    const dir = await tempDir();
    const events: string[] = [];
    const fs: SpillFs = {
      ...nodeSpillFs,
      write: async (path, parts) => {
        await new Promise((r) => setTimeout(r, 30));
        const st = store.stats();
        held.push(st.writingBytes);
        expect(st.bytes + st.writingBytes).toBeLessThanOrEqual(st.budgetBytes);
        await nodeSpillFs.write(path, parts);
        events.push('written');
      },
    };
    const held: number[] = [];
    const { store } = storeOn(dir, { fs }); // room for one entry
    for (let i = 1; i <= 4; i++) {
      const keys = tokens(10, i);
      const kv = ArrayKv.forKeys(keys);
      const read = kv.read.bind(kv);
      let encoding = false;
      kv.read = (j, h, from, to) => {
        if (!encoding) events.push(`encode ${i}`);
        encoding = true;
        return read(j, h, from, to);
      };
      await store.insert(keys, kv);
    }
    await store.flush();
    // Each entry was written ahead; the next one was encoded only after that write ended (the
    // evicted entry's data is read by its write until then).
    expect(events).toEqual(['encode 1', 'written', 'encode 2', 'written', 'encode 3', 'written', 'encode 4', 'written']);
    expect(store.stats()).toMatchObject({ evictions: 3, spillWrites: 4, spillErrors: 0, writingBytes: 0 });
    // Entries 1-3 were evicted while their writes ran: their bytes were reported (and counted) until then.
    expect(held.map((b) => b > 0)).toEqual([true, true, true, false]);
    for (let i = 1; i <= 4; i++) expect((await store.match(tokens(10, i), 10))?.length).toBe(10);
    await store.close();
  });

  it('ignores and removes files of another bundle', async () => {
    const dir = await tempDir();
    const first = storeOn(dir, { bundleId: 'bundle-one' }).store;
    const a = tokens(10, 1);
    await first.insert(a, ArrayKv.forKeys(a));
    await first.close();
    const [name] = await kvFiles(dir);
    expect(name.startsWith(bundleTag('bundle-one'))).toBe(true);
    // Renamed to the other bundle's tag, its header still names bundle-one: also refused.
    await writeFile(join(dir, 'kv', `${bundleTag('bundle-two')}-copied.kv`), await readFile(join(dir, 'kv', name)));
    const other = storeOn(dir, { bundleId: 'bundle-two' }).store;
    expect(await other.match(a, 10)).toBeUndefined();
    expect(await kvFiles(dir)).toEqual([]);
  });

  async function oneFile(): Promise<{ dir: string; path: string; keys: number[] }> {
    const dir = await tempDir();
    const store = storeOn(dir).store;
    const keys = tokens(10, 1);
    await store.insert(keys, ArrayKv.forKeys(keys));
    await store.close();
    const [name] = await kvFiles(dir);
    return { dir, path: join(dir, 'kv', name), keys };
  }

  it('ignores and removes a truncated file', async () => {
    const { dir, path, keys } = await oneFile();
    await truncate(path, (await stat(path)).size - 3);
    const { store } = storeOn(dir);
    expect(await store.match(keys, 10)).toBeUndefined();
    expect(await kvFiles(dir)).toEqual([]);
  });

  it('ignores and removes a file whose body is damaged (checksum)', async () => {
    const { dir, path, keys } = await oneFile();
    const bytes = await readFile(path);
    bytes[bytes.length - 5] ^= 0x40;
    await writeFile(path, bytes);
    const { store, warnings } = storeOn(dir);
    expect(await store.match(keys, 10)).toBeUndefined();
    expect(warnings.join('\n')).toMatch(/damaged/);
    expect(await kvFiles(dir)).toEqual([]);
  });

  it('ignores and removes a damaged header and a file of another format version', async () => {
    const { dir, path, keys } = await oneFile();
    const bytes = await readFile(path);
    const badHeader = Buffer.from(bytes);
    badHeader[20] ^= 0x01;
    await writeFile(path, badHeader);
    const stale = Buffer.from(bytes);
    stale[7] = 0; // the magic's version byte
    await writeFile(join(dir, 'kv', `${bundleTag('bundle-one')}-stale.kv`), stale);
    const { store } = storeOn(dir);
    expect(await store.match(keys, 10)).toBeUndefined();
    expect(await kvFiles(dir)).toEqual([]);
  });

  it('removes temporary files left by a crash, leaves recent ones and foreign names alone', async () => {
    const dir = await tempDir();
    await storeOn(dir).store.close();
    const old = join(dir, 'kv', 'x.kv.1.ab.tmp');
    await writeFile(old, 'partial');
    await utimes(old, new Date(Date.now() - 3600_000), new Date(Date.now() - 3600_000));
    await writeFile(join(dir, 'kv', 'y.kv.2.cd.tmp'), 'partial');
    await writeFile(join(dir, 'kv', 'notes.txt'), 'mine');
    const { store } = storeOn(dir);
    await store.match(tokens(3), 3);
    expect((await readdir(join(dir, 'kv'))).sort()).toEqual(['notes.txt', 'y.kv.2.cd.tmp']);
  });

  it('disk full (ENOSPC) skips the write and serving goes on', async () => {
    const dir = await tempDir();
    let full = true;
    const fs: SpillFs = {
      ...nodeSpillFs,
      write: async (path, parts) => {
        await writeFile(path, parts[0]); // partial file, then the disk is full
        if (full) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
        return nodeSpillFs.write(path, parts);
      },
    };
    const { store, warnings } = storeOn(dir, { fs });
    const [a, b, c] = [tokens(10, 1), tokens(10, 2), tokens(10, 3)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b));
    await store.flush();
    expect(store.stats()).toMatchObject({ spillWrites: 0, diskEntries: 0 });
    expect(store.stats().spillErrors).toBeGreaterThan(0);
    expect(warnings.join('\n')).toMatch(/ENOSPC/);
    expect(await readdir(join(dir, 'kv'))).toEqual([]); // no partial file left
    expect(await store.match(a, 10)).toBeUndefined();
    expect((await store.match(b, 10))?.length).toBe(10);
    full = false; // space freed: later spills work again
    await store.insert(c, ArrayKv.forKeys(c));
    await store.flush();
    expect(store.stats().spillWrites).toBe(1);
  });

  it('a read-only directory means no spill, never a crash', async () => {
    const dir = await tempDir();
    const erofs = () => Promise.reject(Object.assign(new Error('read-only file system'), { code: 'EROFS' }));
    const { store, warnings } = storeOn(dir, { fs: { ...nodeSpillFs, mkdir: erofs, write: erofs } });
    const [a, b, c] = [tokens(10, 1), tokens(10, 2), tokens(10, 3)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b));
    await store.insert(c, ArrayKv.forKeys(c));
    await store.close();
    expect(store.stats().spillWrites).toBe(0);
    expect(warnings.join('\n')).toMatch(/cannot create it \(EROFS\)/);
  });

  it('a data directory path that is a file means no spill, never a crash', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'kv'), 'not a directory');
    const { store, warnings } = storeOn(dir);
    const a = tokens(10, 1);
    await store.insert(a, ArrayKv.forKeys(a));
    expect((await store.match(a, 10))?.length).toBe(10);
    await store.close();
    expect(warnings.length).toBeGreaterThan(0);
  });

  it('disk budget 0 or memory budget 0: no files at all', async () => {
    const dir = await tempDir();
    for (const opts of [{ diskBytes: 0 }, { budgetBytes: 0 }]) {
      const { store } = storeOn(dir, opts);
      const [a, b] = [tokens(10, 1), tokens(10, 2)];
      await store.insert(a, ArrayKv.forKeys(a));
      await store.insert(b, ArrayKv.forKeys(b));
      await store.close();
    }
    await expect(readdir(join(dir, 'kv'))).rejects.toThrow();
  });
});
