/**
 * The ops files stay consistent with the tree: every path a Dockerfile copies exists and is in
 * its build-context allow-list, compose points at real Dockerfiles, and the systemd unit runs the
 * CLI entry point that exists.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = new URL('../../', import.meta.url).pathname;
const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');

describe('ops files', () => {
  for (const dockerfile of ['ops/Dockerfile', 'ops/Dockerfile.cuda']) {
    it(`${dockerfile} copies only paths that exist and that its .dockerignore lets through`, () => {
      const text = read(dockerfile);
      const allow = read(`${dockerfile}.dockerignore`)
        .split('\n')
        .filter((l) => l.startsWith('!'))
        .map((l) => l.slice(1).replace(/\/$/, ''));
      const sources = [...text.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1].split(/\s+/));
      expect(sources.length).toBeGreaterThan(3);
      for (const src of sources) {
        expect(existsSync(join(ROOT, src)), src).toBe(true);
        expect(allow, `${src} is copied but excluded from the build context`).toContain(src.replace(/\/$/, ''));
      }
      expect(text).toMatch(/^ENTRYPOINT \["node", "bin\/fromage\.js"\]$/m);
      expect(text).toMatch(/npm ci --omit=dev/);
    });
  }

  it('the CPU image skips the CUDA download and the CUDA image asks for it', () => {
    expect(read('ops/Dockerfile')).toMatch(/ONNXRUNTIME_NODE_INSTALL=skip/);
    expect(read('ops/Dockerfile')).toMatch(/^FROM node:20-bookworm-slim$/m);
    expect(read('ops/Dockerfile.cuda')).toMatch(/ONNXRUNTIME_NODE_INSTALL=cuda12/);
  });

  it('compose builds from the Dockerfiles that exist and mounts checkpoints, index and data', () => {
    const compose = read('ops/compose.yaml');
    for (const m of compose.matchAll(/dockerfile: (\S+)/g)) expect(existsSync(join(ROOT, m[1])), m[1]).toBe(true);
    for (const dir of ['checkpoints', 'index', 'data']) expect(compose).toContain(`../${dir}:/app/${dir}`);
    expect(compose).toMatch(/env_file: \.\.\/\.env/);
  });

  it('the systemd unit starts the CLI that exists', () => {
    const unit = read('ops/fromage-bot.service');
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/node bin\/fromage\.js serve$/m);
    expect(existsSync(join(ROOT, 'bin/fromage.js'))).toBe(true);
  });
});
