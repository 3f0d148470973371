/**
 * Progress bars for long work (convert, index import, downloads). On a TTY: a live bar on
 * stderr; elsewhere (CI, logs, tests): one line every ~10% so output stays readable.
 */
import cliProgress from 'cli-progress';

export interface ProgressBar {
  /** Sets the absolute amount done. */
  update(done: number, detail?: string): void;
  increment(by?: number, detail?: string): void;
  setTotal(total: number): void;
  stop(): void;
}

export interface ProgressOptions {
  /** Unit shown after the numbers; `bytes` formats as MiB/GiB. */
  unit?: 'bytes' | string;
  stream?: NodeJS.WriteStream;
  /** Force plain lines even on a TTY. */
  plain?: boolean;
  /** Print nothing at all (library use, tests). */
  silent?: boolean;
}

function formatAmount(n: number, unit: string | undefined): string {
  if (unit !== 'bytes') return `${Math.round(n)}${unit ? ` ${unit}` : ''}`;
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

export function createProgress(label: string, total: number, options: ProgressOptions = {}): ProgressBar {
  const stream = options.stream ?? process.stderr;
  let done = 0;
  let totalNow = total;
  if (options.silent) {
    return { update() {}, increment() {}, setTotal() {}, stop() {} };
  }
  if (stream.isTTY && !options.plain) {
    const bar = new cliProgress.SingleBar(
      {
        stream,
        format: `${label} [{bar}] {percentage}% {amount} | ETA {eta_formatted} {detail}`,
        hideCursor: true,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    const payload = (detail = '') => ({ amount: `${formatAmount(done, options.unit)}/${formatAmount(totalNow, options.unit)}`, detail });
    bar.start(totalNow, 0, payload());
    return {
      update(n, detail) {
        done = n;
        bar.update(n, payload(detail));
      },
      increment(by = 1, detail) {
        done += by;
        bar.update(done, payload(detail));
      },
      setTotal(t) {
        totalNow = t;
        bar.setTotal(t);
      },
      stop() {
        bar.stop();
      },
    };
  }
  let lastTenth = -1;
  const started = Date.now();
  const report = (detail?: string) => {
    const tenth = totalNow > 0 ? Math.floor((done / totalNow) * 10) : 0;
    if (tenth === lastTenth) return;
    lastTenth = tenth;
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    stream.write(`${label}: ${Math.min(100, tenth * 10)}% (${formatAmount(done, options.unit)}/${formatAmount(totalNow, options.unit)}, ${secs}s)${detail ? ` ${detail}` : ''}\n`);
  };
  return {
    update(n, detail) {
      done = n;
      report(detail);
    },
    increment(by = 1, detail) {
      done += by;
      report(detail);
    },
    setTotal(t) {
      totalNow = t;
    },
    stop() {},
  };
}
