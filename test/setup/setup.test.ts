import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ConvertRequest } from '../../src/setup/convert-step.ts';
import { runSetup, type SetupOptions } from '../../src/setup/run-setup.ts';
import { FakeHub, FIXTURES, fixtureRepos } from './fake-hub.ts';

const SHARD = 'facebook/opt-6.7b/pytorch_model-00002-of-00003.bin';
const SHARD_FIXTURE = join(FIXTURES, 'facebook/opt-6.7b/pytorch_model-00002-of-00003.bin');

let hub: FakeHub;
let work: string;
let converted: ConvertRequest[];
let printed: string[];

/** Stands in for the converter: records the call and writes a manifest-shaped file. */
async function recordingConvert(req: ConvertRequest): Promise<void> {
  converted.push(req);
  await mkdir(req.out, { recursive: true });
  await writeFile(join(req.out, 'fromage.json'), '{}');
}

function options(extra: Partial<SetupOptions> = {}): SetupOptions {
  return {
    dir: join(work, 'checkpoints'),
    out: join(work, 'checkpoints', 'bundle'),
    device: 'cpu',
    endpoint: hub.endpoint,
    convert: recordingConvert,
    print: (line) => printed.push(line),
    progress: () => ({ update() {}, increment() {}, setTotal() {}, stop() {} }),
    retryDelayMs: 5,
    ...extra,
  };
}

const upstream = (...p: string[]) => join(work, 'checkpoints', 'upstream', ...p);

beforeEach(async () => {
  hub = new FakeHub(fixtureRepos());
  await hub.start();
  work = await mkdtemp(join(tmpdir(), 'fromage-setup-'));
  converted = [];
  printed = [];
});

afterEach(async () => {
  await hub.stop();
  await rm(work, { recursive: true, force: true });
});

describe('fromage setup against a fake hub', () => {
  it('downloads, verifies and converts every upstream file, pinned to the commit main resolved to', async () => {
    const result = await runSetup(options({ token: 'hf_testtokentesttoken', showIndexHelp: true }));
    expect(result.outcome).toBe('done');
    expect(result.downloaded.length).toBe(17);
    for (const [local, fixture] of [
      ['facebook/opt-6.7b/pytorch_model-00001-of-00003.bin', 'facebook/opt-6.7b/pytorch_model-00001-of-00003.bin'],
      ['facebook/opt-6.7b/vocab.json', 'facebook/opt-6.7b/vocab.json'],
      ['openai/clip-vit-large-patch14/model.safetensors', 'openai/clip-vit-large-patch14/model.safetensors'],
      ['jykoh/fromage/pretrained_ckpt.pth.tar', 'fromage_model/pretrained_ckpt.pth.tar'],
      ['jykoh/fromage/fromage_vis4/pretrained_ckpt.pth.tar', 'fromage_model/fromage_vis4/pretrained_ckpt.pth.tar'],
    ]) {
      expect(readFileSync(upstream(local)).equals(readFileSync(join(FIXTURES, fixture))), local).toBe(true);
    }
    // The CLIP pytorch_model.bin duplicate is not needed and not fetched.
    expect(existsSync(upstream('openai/clip-vit-large-patch14/pytorch_model.bin'))).toBe(false);

    // Files are requested by commit id, never by branch name, once the listing pinned it.
    const commit = hub.commitOf('facebook/opt-6.7b');
    const lock = JSON.parse(await readFile(upstream('setup-lock.json'), 'utf8'));
    expect(lock.repos['facebook/opt-6.7b'].commit).toBe(commit);
    expect(hub.requests.filter((r) => r.path.includes('/resolve/main/'))).toEqual([]);

    // The token goes to the hub, never to the CDN on another origin.
    expect(hub.requests.filter((r) => r.server === 'hub').every((r) => r.authorization === 'Bearer hf_testtokentesttoken')).toBe(true);
    const cdn = hub.requests.filter((r) => r.server === 'cdn');
    expect(cdn.length).toBeGreaterThan(0);
    expect(cdn.every((r) => r.authorization === undefined)).toBe(true);

    expect(converted).toEqual([
      { opt: upstream('facebook/opt-6.7b'), clip: upstream('openai/clip-vit-large-patch14'), fromage: upstream('jykoh/fromage'), out: join(work, 'checkpoints', 'bundle.incomplete'), weights: 'int4' },
    ]);
    expect(existsSync(join(work, 'checkpoints', 'bundle', 'fromage.json'))).toBe(true);
    expect(existsSync(join(work, 'checkpoints', 'bundle.incomplete'))).toBe(false);
    // The same command the README gives, runnable as printed from a clone (npx finds the bin).
    expect(printed.join('\n')).toMatch(/ {2}2\. npx fromage index import cc3m_embeddings\.pkl --out /);
  });

  it('picks fp16 on CUDA and the 4-visual-token checkpoint when asked', async () => {
    await runSetup(options({ device: 'cuda', visualTokens: 4 }));
    expect(converted[0]).toMatchObject({ weights: 'fp16', fromage: upstream('jykoh/fromage', 'fromage_vis4') });
  });

  it('is a no-op on rerun: no request reaches the hub and nothing is converted again', async () => {
    await runSetup(options());
    hub.requests.length = 0;
    const again = await runSetup(options());
    expect(again.outcome).toBe('up-to-date');
    expect(hub.requests).toEqual([]);
    expect(converted.length).toBe(1);
    expect(printed.at(-1)).toMatch(/Nothing to do/);
  });

  it('reconverts without downloading when only the weight format changes', async () => {
    await runSetup(options());
    hub.requests.length = 0;
    const again = await runSetup(options({ weights: 'int8' }));
    expect(again.downloaded).toEqual([]);
    expect(hub.downloads()).toEqual([]);
    expect(converted.map((c) => c.weights)).toEqual(['int4', 'int8']);
  });

  it('resumes a download cut off mid-body with a Range request and still verifies the sha256', async () => {
    hub.dropOnce.add(SHARD);
    const result = await runSetup(options());
    expect(result.downloaded).toContain(SHARD);
    const sha256 = createHash('sha256').update(readFileSync(SHARD_FIXTURE)).digest('hex');
    const blobGets = hub.requests.filter((r) => r.server === 'cdn' && r.path.includes(sha256));
    expect(blobGets.length).toBe(2);
    expect(blobGets[0].range).toBeUndefined();
    const offset = Number(/^bytes=(\d+)-$/.exec(blobGets[1].range ?? '')?.[1]);
    expect(offset).toBeGreaterThan(0);
    expect(offset).toBeLessThan(readFileSync(SHARD_FIXTURE).length);
    expect(readFileSync(upstream(SHARD)).equals(readFileSync(SHARD_FIXTURE))).toBe(true);
    expect(existsSync(upstream(SHARD) + '.incomplete')).toBe(false);
  });

  it('starts over, and still verifies, when the server ignores the Range request', async () => {
    hub.dropOnce.add(SHARD);
    hub.ignoreRange = true;
    await runSetup(options());
    const ranged = hub.requests.filter((r) => r.server === 'cdn' && r.range);
    expect(ranged).toHaveLength(1);
    expect(readFileSync(upstream(SHARD)).equals(readFileSync(SHARD_FIXTURE))).toBe(true);
  });

  it('retries a CDN that answers 503 and then succeeds', async () => {
    hub.cdnFailures = 2;
    const result = await runSetup(options({ jobs: 1 }));
    expect(result.downloaded).toHaveLength(17);
    expect(hub.requests.filter((r) => r.server === 'cdn').length).toBe(6 + 2); // 6 LFS files (3 OPT shards, CLIP, 2 FROMAGe checkpoints) + 2 failures
  });

  it('resumes a partial file left by an earlier, killed run', async () => {
    const bytes = readFileSync(SHARD_FIXTURE);
    await mkdir(upstream('facebook/opt-6.7b'), { recursive: true });
    await writeFile(upstream(SHARD) + '.incomplete', bytes.subarray(0, 40_000));
    await runSetup(options());
    const ranged = hub.requests.filter((r) => r.server === 'cdn' && r.range);
    expect(ranged.map((r) => r.range)).toEqual(['bytes=40000-']);
    expect(readFileSync(upstream(SHARD)).equals(bytes)).toBe(true);
  });

  it('fails on a sha256 mismatch, names the file, keeps nothing and converts nothing', async () => {
    hub.corrupt.add(SHARD);
    await expect(runSetup(options())).rejects.toThrow(/pytorch_model-00002-of-00003\.bin: sha256 mismatch \(expected [0-9a-f]{64}, got [0-9a-f]{64}\)/);
    expect(converted).toEqual([]);
    expect(existsSync(upstream(SHARD))).toBe(false);
    expect(existsSync(upstream(SHARD) + '.incomplete')).toBe(false);
    expect(existsSync(join(work, 'checkpoints', 'bundle'))).toBe(false);
  });

  it('checks files kept in git against their blob id', async () => {
    hub.corrupt.add('facebook/opt-6.7b/config.json');
    await expect(runSetup(options())).rejects.toThrow(/config\.json: git-sha1 mismatch/);
    expect(converted).toEqual([]);
  });

  it('refuses up front when the disk is too small, before any file request', async () => {
    const statfs = async () => ({ bavail: 1000, bsize: 4096 });
    await expect(runSetup(options({ statfs }))).rejects.toThrow(/not enough disk space on .*: setup needs .* but 3\.9 MiB is free/);
    expect(hub.requests.filter((r) => r.path.includes('/resolve/') || r.server === 'cdn')).toEqual([]);
    expect(existsSync(upstream('facebook'))).toBe(false);
  });

  it('plans without writing anything on --dry-run', async () => {
    const result = await runSetup(options({ dryRun: true }));
    expect(result.outcome).toBe('dry-run');
    expect(result.bytesToFetch).toBeGreaterThan(500_000);
    expect(existsSync(upstream())).toBe(false);
    expect(printed.join('\n')).toMatch(/facebook\/opt-6\.7b@[0-9a-f]{10}: 10 files, 10 to fetch/);
  });

  it('downloads nothing when the user says no', async () => {
    const questions: string[] = [];
    const result = await runSetup(options({ confirm: async (q) => (questions.push(q), false) }));
    expect(result.outcome).toBe('cancelled');
    expect(questions[0]).toBe(`Download 722.2 KiB from ${hub.endpoint} and convert it (int4)?`);
    expect(hub.downloads()).toEqual([]);
    expect(converted).toEqual([]);
  });

  it('refuses to run beside another setup in the same folder, and takes over a stale marker', async () => {
    await mkdir(upstream(), { recursive: true });
    await writeFile(upstream('setup.running'), String(process.ppid)); // a live process
    await expect(runSetup(options())).rejects.toThrow(new RegExp(`another \`fromage setup\` \\(pid ${process.ppid}\\) is working in`));
    expect(hub.downloads()).toEqual([]);
    await writeFile(upstream('setup.running'), '2147483646'); // no such process
    expect((await runSetup(options())).outcome).toBe('done');
    expect(existsSync(upstream('setup.running'))).toBe(false);
  });

  it('names the fix for a damaged lock file', async () => {
    await mkdir(upstream(), { recursive: true });
    await writeFile(upstream('setup-lock.json'), '{"version": 1, "repos": ');
    await expect(runSetup(options())).rejects.toThrow(/setup-lock\.json is damaged; delete it and rerun `fromage setup`/);
  });

  it('says to set HF_TOKEN when the hub wants authentication', async () => {
    hub.requireToken = 'hf_secretsecretsecret';
    await expect(runSetup(options())).rejects.toThrow(/set HF_TOKEN/i);
  });

  it('names what a mirror is missing', async () => {
    await hub.stop();
    hub = new FakeHub([{ ...fixtureRepos()[0], exclude: ['merges.txt'] }, ...fixtureRepos().slice(1)]);
    await hub.start();
    await expect(runSetup(options())).rejects.toThrow(/facebook\/opt-6\.7b@[0-9a-f]{10} on http:\/\/127\.0\.0\.1:\d+ lacks merges\.txt/);
  });

  it('hashes files already on disk instead of downloading them again', async () => {
    await runSetup(options());
    // Lose the lock's verification records (as when files are copied from another machine).
    const lockPath = upstream('setup-lock.json');
    const lock = JSON.parse(await readFile(lockPath, 'utf8'));
    lock.verified = {};
    delete lock.bundle;
    await writeFile(lockPath, JSON.stringify(lock));
    hub.requests.length = 0;
    const again = await runSetup(options());
    expect(again.hashed.length).toBe(17);
    expect(hub.requests).toEqual([]);
  });
});

describe('fromage setup behind a proxy', () => {
  it('tunnels every request through HTTP_PROXY', async () => {
    const { createServer } = await import('node:http');
    const { connect } = await import('node:net');
    const tunnels: string[] = [];
    const sockets: { destroy(): void }[] = [];
    const proxy = createServer((_req, res) => res.writeHead(405).end());
    proxy.on('connect', (req, client, head) => {
      tunnels.push(req.url ?? '');
      const [host, port] = (req.url ?? '').split(':');
      sockets.push(client);
      const upstream = connect(Number(port), host, () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        upstream.write(head);
        upstream.pipe(client).on('error', () => undefined);
        client.pipe(upstream).on('error', () => undefined);
      });
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const env = { HTTP_PROXY: process.env.HTTP_PROXY, NO_PROXY: process.env.NO_PROXY };
    process.env.HTTP_PROXY = `http://127.0.0.1:${(proxy.address() as { port: number }).port}`;
    delete process.env.NO_PROXY;
    try {
      const result = await runSetup(options({ dryRun: true }));
      expect(result.outcome).toBe('dry-run');
      expect(tunnels).toContain(new URL(hub.endpoint).host);
    } finally {
      for (const [k, v] of Object.entries(env)) if (v === undefined) delete process.env[k];
      else process.env[k] = v;
      for (const s of sockets) s.destroy();
      await new Promise((r) => proxy.close(r));
    }
  });
});
