import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/service/metrics.ts';
import type { ServingStats } from '../../src/model/worker-protocol.ts';

const stats: ServingStats = {
  batch: { rows: 2, maxRows: 4, waiting: 1, waitingForMemory: 1, liveBytes: 8192, memoryBudgetBytes: 1 << 20, steps: 10, rowSteps: 25 },
  kv: { entries: 3, bytes: 4096, budgetBytes: 1 << 20, reusedPositions: 120, prefilledPositions: 30, evictions: 1, spillWrites: 2, spillReads: 1, writingBytes: 2048, spillErrors: 3 },
};

describe('serving metrics', () => {
  it('exports batch occupancy, reused and prefilled positions, evictions, spill reads/writes and live/kept KV bytes at scrape time', async () => {
    const metrics = createMetrics();
    let reads = 0;
    metrics.watchServing(async () => {
      reads++;
      return stats;
    });
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/^fromage_batch_rows 2$/m);
    expect(text).toMatch(/^fromage_batch_rows_max 4$/m);
    expect(text).toMatch(/^fromage_batch_occupancy 2\.5$/m);
    expect(text).toMatch(/^fromage_kv_reused_positions 120$/m);
    expect(text).toMatch(/^fromage_kv_prefilled_positions 30$/m);
    expect(text).toMatch(/^fromage_kv_evictions 1$/m);
    expect(text).toMatch(/^fromage_kv_spill_writes 2$/m);
    expect(text).toMatch(/^fromage_kv_spill_reads 1$/m);
    expect(text).toMatch(/^fromage_kv_spill_missed 3$/m);
    // Live and kept KV memory beside the budget they share, and jobs waiting for that memory.
    expect(text).toMatch(/^fromage_kv_live_bytes 8192$/m);
    expect(text).toMatch(/^fromage_kv_bytes 4096$/m);
    expect(text).toMatch(/^fromage_kv_writing_bytes 2048$/m);
    expect(text).toMatch(/^fromage_kv_budget_bytes 1048576$/m);
    expect(text).toMatch(/^fromage_batch_waiting_memory 1$/m);
    // One engine round trip per scrape, not one per gauge.
    expect(reads).toBe(1);
  });

  it('a scrape while no model worker runs (or the read fails) still answers', async () => {
    const metrics = createMetrics();
    metrics.watchServing(() => Promise.reject(new Error('worker gone')));
    const text = await metrics.registry.metrics();
    expect(text).toContain('fromage_kv_reused_positions');
  });
});
