/**
 * FromageEngine end to end: worker thread, real bundle and index (fixtures), images served on
 * loopback. Checks the answers against the oracle cases and the failure paths a user can cause.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageInputError } from '../../src/conversation/types.ts';
import { EngineInputError, type PromptItem } from '../../src/model/engine-api.ts';
import { EngineWorkerError, FromageEngine } from '../../src/model/engine.ts';
import { BundleError, CancelledError } from '../../src/model/errors.ts';
import { NO_INDEX_NOTE } from '../../src/model/reply-segments.ts';
import { buildFixtureIndex, convertFixtureBundle, serveFixtureImages } from './helpers.ts';
import { FIXTURES } from './reference.ts';

const image = async (file: string): Promise<PromptItem> => {
  const data = await readFile(join(FIXTURES, file));
  return { type: 'image', image: { data, hash: createHash('sha256').update(data).digest('hex') } };
};
const greedy = { retScaleFactor: 1, maxImages: 1, maxWords: 16, temperature: 0 };

describe('FromageEngine (worker thread, vis1 fixtures)', () => {
  let engine: FromageEngine;
  let tmp: string;
  let cleanupBundle: () => Promise<void>;
  let closeServer: () => Promise<void>;
  let bundleDir: string;

  beforeAll(async () => {
    const conv = await convertFixtureBundle('vis1');
    bundleDir = conv.dir;
    cleanupBundle = conv.cleanup;
    const srv = await serveFixtureImages();
    closeServer = srv.close;
    tmp = await mkdtemp(join(tmpdir(), 'fromage-engine-'));
    await buildFixtureIndex('vis1', join(tmp, 'index'), srv.port);
    engine = await FromageEngine.start({ bundleDir, indexDirs: [join(tmp, 'index')], fetch: true, fetchAllow: ['127.0.0.1'], threads: 1 });
  });
  afterAll(async () => {
    await engine?.close();
    await closeServer?.();
    await cleanupBundle?.();
    await rm(tmp, { recursive: true, force: true });
  });

  it('reports the bundle', () => {
    expect(engine.info).toMatchObject({ contextLength: 128, nVisualTokens: 1, hasIndex: true });
    expect(engine.info.bundleId.length).toBeGreaterThanOrEqual(8);
  });

  it('counts tokens without the leading </s>', async () => {
    expect(await engine.countTokens('Q: what is this?\nA:')).toBe(13);
  });

  it('answers i_image_qa as the reference, streaming text and keeping the event loop free', async () => {
    const seen: string[] = [];
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const r = await engine.chat([await image('images/landscape.png'), { type: 'text', text: 'Q: what is this?\nA:' }], greedy, { onText: (t) => seen.push(t) });
    clearInterval(timer);
    expect(r.generatedTokens).toBe(16);
    expect(r.segments).toEqual([{ type: 'text', text: '\ufffd_W\u0010\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\u0014[\ufffd' }]);
    expect(seen).toHaveLength(16);
    expect(ticks).toBeGreaterThan(0);
  });

  it('resolves two [RET]s into fetched images (iv_ret_mid_answer)', async () => {
    const r = await engine.chat([await image('images/alpha.png'), { type: 'text', text: 'Q: what is this?\nA:' }], { ...greedy, maxWords: 20, retScaleFactor: 1.8, maxNumRets: 2 });
    expect(r.segments.map((s) => (s.type === 'text' ? s.text : s.images.map((i) => i.source)))).toEqual([
      '\ufffd/\\\u0012WThe\u00194\ufffd/"',
      [expect.stringMatching(/\/img\/00042\.png$/)],
      'N',
      [expect.stringMatching(/\/img\/00009\.png$/)],
    ]);
    // What demo/app.py appends to the dialogue: FROMAGe's text outputs, ' [RET]' kept.
    expect(r.historyText).toBe('\ufffd/\\\u0012WThe\u00194\ufffd/" [RET] N [RET]');
    const img = r.segments[1].type === 'images' ? r.segments[1].images[0] : undefined;
    expect(img?.contentType).toMatch(/^image\//);
    expect(img?.data.length).toBeGreaterThan(0);
  });

  it('retrieves for a text query, skipping the dead link (iii_text_ret)', async () => {
    const images = await engine.retrieve('a photo of a red circle', 3);
    expect(images.map((i) => i.source.replace(/^.*\/img\//, ''))).toEqual(['00025.png', '00020.png', '00029.png']);
    expect(images[0].score).toBeCloseTo(3.351, 2);
  });

  it('scores log-likelihood through the worker', async () => {
    const v = await engine.logLikelihood([{ type: 'text', text: 'a photo of a red circle' }]);
    expect(Number.isFinite(v)).toBe(true);
    expect(v).toBeLessThan(0);
  });

  it('refuses a prompt longer than the context with an EngineInputError', async () => {
    const err = await engine.chat([{ type: 'text', text: 'word '.repeat(200) }], greedy).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EngineInputError);
    expect((err as Error).message).toMatch(/model holds 128/);
  });

  it('refuses a non-image with an ImageInputError and keeps working', async () => {
    const bad: PromptItem = { type: 'image', image: { data: Buffer.from('<html>404</html>'), hash: 'x'.repeat(64) } };
    const err = await engine.chat([bad, { type: 'text', text: 'hi' }], greedy).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageInputError);
    expect(await engine.countTokens('hi')).toBe(2);
  });

  it('cancels between steps', async () => {
    const ctl = new AbortController();
    const err = await engine
      .chat([{ type: 'text', text: 'Q: hi\nA:' }], { ...greedy, maxWords: 60 }, { signal: ctl.signal, onText: () => ctl.abort() })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CancelledError);
  });

  it('fails the running job when the worker is abandoned mid-generation, then runs the next job on a fresh worker', async () => {
    let restarted = false;
    const err = await engine
      .chat([{ type: 'text', text: 'Q: hi\nA:' }], { ...greedy, maxWords: 60 }, {
        onText: () => {
          if (!restarted) engine.restartWorker('watchdog');
          restarted = true;
        },
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EngineWorkerError);
    expect((err as Error).message).toMatch(/worker stopped \(watchdog\)/);
    const r = await engine.chat([{ type: 'text', text: 'Q: what is this?\nA:' }], { ...greedy, maxWords: 3 });
    expect(r.generatedTokens).toBe(3);
  });

  it('fails the job of a worker that dies, and the next job gets a fresh worker', async () => {
    const crashy = await FromageEngine.start({ bundleDir, indexDirs: [], fetch: false, threads: 1, workerEntry: new URL('./crash-worker.mjs', import.meta.url) });
    try {
      const err = await crashy.chat([{ type: 'text', text: 'die now' }], greedy).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(EngineWorkerError);
      expect((err as Error).message).toMatch(/exit code 7/);
      const next = await crashy.chat([{ type: 'text', text: 'Q: hello\nA:' }], { ...greedy, maxWords: 2 });
      expect(next.generatedTokens).toBe(2);
    } finally {
      await crashy.close();
    }
  });

  it('refuses to start on a missing bundle, saying what to run', async () => {
    const err = await FromageEngine.start({ bundleDir: join(tmp, 'nope'), indexDirs: [], fetch: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BundleError);
    expect((err as Error).message).toMatch(/fromage setup/);
  });
});

describe('FromageEngine without a retrieval index', () => {
  let engine: FromageEngine;
  let cleanupBundle: () => Promise<void>;

  beforeAll(async () => {
    const conv = await convertFixtureBundle('vis1');
    cleanupBundle = conv.cleanup;
    engine = await FromageEngine.start({ bundleDir: conv.dir, indexDirs: [], fetch: false, threads: 1 });
  });
  afterAll(async () => {
    await engine?.close();
    await cleanupBundle?.();
  });

  it('says why it cannot show the image the model asked for (iv_ret_mid_answer)', async () => {
    expect(engine.info.hasIndex).toBe(false);
    const r = await engine.chat([await image('images/alpha.png'), { type: 'text', text: 'Q: what is this?\nA:' }], { ...greedy, maxWords: 20, retScaleFactor: 1.8, maxNumRets: 2 });
    const texts = r.segments.map((s) => (s.type === 'text' ? s.text : '<images>'));
    expect(texts).not.toContain('<images>');
    expect(texts.filter((t) => t === NO_INDEX_NOTE)).toHaveLength(1);
    expect(texts[1]).toBe(NO_INDEX_NOTE);
    expect(r.historyText).toContain('[RET]');
  });
});

describe('FromageEngine decoding several answers in one batch (FROMAGE_BATCH=3)', () => {
  let engine: FromageEngine;
  let bundleDir: string;
  let cleanupBundle: () => Promise<void>;
  const prompts = ['Q: hi\nA:', 'Q: what is round and red?\nA:', 'Q: tell me a long story about the sky\nA:'].map((text): PromptItem[] => [{ type: 'text', text }]);

  beforeAll(async () => {
    const conv = await convertFixtureBundle('vis1');
    bundleDir = conv.dir;
    cleanupBundle = conv.cleanup;
    engine = await FromageEngine.start({ bundleDir, indexDirs: [], fetch: false, threads: 1, batch: 3, kvCacheMb: 0, onLog: () => undefined });
  });
  afterAll(async () => {
    await engine?.close();
    await cleanupBundle?.();
  });

  it('answers concurrent jobs together, each as it is answered alone; a cancelled one leaves the others unchanged', async () => {
    const settings = { ...greedy, maxWords: 24 };
    const alone = [];
    for (const p of prompts) alone.push(await engine.chat(p, settings));
    const streams = prompts.map(() => 0);
    const ctl = new AbortController();
    const together = await Promise.allSettled([
      ...prompts.map((p, i) => engine.chat(p, settings, { onText: () => streams[i]++ })),
      engine.chat(prompts[1], { ...settings, maxWords: 60 }, { signal: ctl.signal, onText: (t) => t.length > 3 && ctl.abort() }),
    ]);
    expect(together.slice(0, 3)).toEqual(alone.map((value) => ({ status: 'fulfilled', value })));
    expect(together[3]).toMatchObject({ status: 'rejected', reason: expect.any(CancelledError) });
    expect(streams).toEqual([24, 24, 24]);
  });

  it('reuses kept caches across turns, spills them at close, and resumes from disk after a restart, with the same answers', async () => {
    const kvDir = await mkdtemp(join(tmpdir(), 'fromage-kv-'));
    const options = { bundleDir, indexDirs: [], fetch: false, threads: 1, batch: 2, kvCacheMb: 64, kvDiskMb: 64, kvCodec: 'fp32' as const, kvDir, onLog: () => undefined };
    try {
      const turn1: PromptItem[] = [await image('images/dialogue_1.png'), { type: 'text', text: 'Q: what do you see?\nA:' }];
      const first = await FromageEngine.start(options);
      const a1 = await first.chat(turn1, { ...greedy, maxWords: 8 });
      const turn2: PromptItem[] = [...turn1, { type: 'text', text: `${a1.historyText}\n` }, { type: 'text', text: 'Q: is it round?\nA:' }];
      const a2 = await first.chat(turn2, { ...greedy, maxWords: 8 });
      const st = await first.servingStats();
      expect(st?.batch).toMatchObject({ maxRows: 2, rows: 0 });
      expect(st?.kv?.reusedPositions).toBeGreaterThan(0);
      await first.close();
      expect((await readdir(kvDir)).some((f) => f.endsWith('.kv'))).toBe(true);
      const turn3: PromptItem[] = [...turn2, { type: 'text', text: `${a2.historyText}\n` }, { type: 'text', text: 'Q: why?\nA:' }];
      const resumed = await FromageEngine.start(options);
      const cold = await FromageEngine.start({ ...options, kvCacheMb: 0 });
      try {
        expect(await resumed.chat(turn3, { ...greedy, maxWords: 8 })).toEqual(await cold.chat(turn3, { ...greedy, maxWords: 8 }));
        const kv = (await resumed.servingStats())?.kv;
        expect(kv?.spillReads).toBeGreaterThan(0);
        expect(kv?.reusedPositions).toBeGreaterThan(20);
        expect((await cold.servingStats())?.kv).toBeUndefined();
      } finally {
        await resumed.close();
        await cold.close();
      }
    } finally {
      await rm(kvDir, { recursive: true, force: true });
    }
  });

  it('a worker that dies mid-batch fails only the jobs in flight; the next job gets a fresh worker', async () => {
    const crashy = await FromageEngine.start({ bundleDir, indexDirs: [], fetch: false, threads: 1, batch: 3, kvCacheMb: 0, onLog: () => undefined, workerEntry: new URL('./crash-worker.mjs', import.meta.url) });
    try {
      const done = await crashy.chat(prompts[0], { ...greedy, maxWords: 4 });
      const streaming = new Set<number>();
      let started!: () => void;
      const bothStreaming = new Promise<void>((r) => (started = r));
      const streamed = (job: number) => (): void => {
        streaming.add(job);
        if (streaming.size === 2) started();
      };
      const first = crashy.chat(prompts[1], { ...greedy, maxWords: 100 }, { onText: streamed(1) }).catch((e: unknown) => e);
      const second = crashy.chat(prompts[0], { ...greedy, maxWords: 100 }, { onText: streamed(2) }).catch((e: unknown) => e);
      await bothStreaming;
      const killer = crashy.chat([{ type: 'text', text: 'die now' }], greedy).catch((e: unknown) => e);
      for (const err of await Promise.all([first, second, killer])) {
        expect(err).toBeInstanceOf(EngineWorkerError);
        expect((err as Error).message).toMatch(/exit code 7/);
      }
      expect(done.generatedTokens).toBe(4);
      const [a, b] = await Promise.all([crashy.chat(prompts[0], { ...greedy, maxWords: 4 }), crashy.chat(prompts[2], { ...greedy, maxWords: 3 })]);
      expect(a).toEqual(done);
      expect(b.generatedTokens).toBe(3);
    } finally {
      await crashy.close();
    }
  });
});
