import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HubClient } from '../../src/convert/hub/client.ts';
import { FakeHub, fixtureRepos } from './fake-hub.ts';

let hub: FakeHub;

beforeAll(async () => {
  hub = new FakeHub(fixtureRepos());
  await hub.start();
});
afterAll(async () => {
  await hub.stop();
});

describe('hub client', () => {
  it('reads a listing: commit, sizes, LFS sha256 for big files, git blob ids for small ones', async () => {
    const info = await new HubClient({ endpoint: `${hub.endpoint}/` }).repoInfo('openai/clip-vit-large-patch14', 'main');
    expect(info.commit).toBe(hub.commitOf('openai/clip-vit-large-patch14'));
    const st = info.files.find((f) => f.path === 'model.safetensors')!;
    expect(st.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(st.gitSha1).toBeUndefined();
    const cfg = info.files.find((f) => f.path === 'config.json')!;
    expect(cfg.gitSha1).toMatch(/^[0-9a-f]{40}$/);
    expect(cfg.sha256).toBeUndefined();
  });

  it('resolves an LFS file to its CDN location with the linked size and etag', async () => {
    const client = new HubClient({ endpoint: hub.endpoint });
    const commit = hub.commitOf('jykoh/fromage');
    const r = await client.resolve('jykoh/fromage', commit, 'fromage_vis4/pretrained_ckpt.pth.tar');
    expect(r.url.startsWith(hub.cdnOrigin)).toBe(true);
    expect(r.etag).toMatch(/^[0-9a-f]{64}$/);
    expect(r.commit).toBe(commit);
    expect(r.size).toBeGreaterThan(1000);
  });

  it('follows the relative redirect of a small file and keeps the token on the hub', async () => {
    const client = new HubClient({ endpoint: hub.endpoint, token: 'hf_abcdefabcdefabcdef' });
    const r = await client.resolve('facebook/opt-6.7b', 'main', 'config.json');
    expect(r.url).toMatch(/\/api\/resolve-cache\/models\/facebook\/opt-6\.7b\/[0-9a-f]{40}\/config\.json$/);
    expect(r.size).toBe(655);
    expect(client.headersFor(r.url).authorization).toBe('Bearer hf_abcdefabcdefabcdef');
    expect(client.headersFor(`${hub.cdnOrigin}/repos/x`).authorization).toBeUndefined();
  });

  it('names a missing repository, revision and file', async () => {
    const client = new HubClient({ endpoint: hub.endpoint });
    await expect(client.repoInfo('nobody/nothing', 'main')).rejects.toThrow(/repository nobody\/nothing not found on .* \(if it is private or gated, set HF_TOKEN\)/);
    await expect(client.repoInfo('jykoh/fromage', 'v9')).rejects.toThrow(/revision not found in jykoh\/fromage \(hub: Invalid rev id: v9\)/);
    await expect(client.resolve('jykoh/fromage', 'main', 'nope.bin')).rejects.toThrow(/jykoh\/fromage\/nope\.bin: not found on/);
  });

  it('says when HF_ENDPOINT is not a hub at all', async () => {
    const server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hello</html>'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const client = new HubClient({ endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
      await expect(client.repoInfo('facebook/opt-6.7b', 'main')).rejects.toThrow(/not JSON .*is HF_ENDPOINT a Hugging Face hub\?/);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('says when nothing listens at HF_ENDPOINT', async () => {
    const client = new HubClient({ endpoint: 'http://127.0.0.1:9' });
    await expect(client.repoInfo('facebook/opt-6.7b', 'main')).rejects.toThrow(/cannot reach http:\/\/127\.0\.0\.1:9 \(ECONNREFUSED\); check your network and HF_ENDPOINT/);
  });
});
