// The real model worker, plus a way to make it die mid-job: a chat job whose prompt is the text
// "die now" exits the thread (from JavaScript, with no graph call in flight).
import { parentPort } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
parentPort.on('message', (m) => {
  if (m.type === 'job' && m.job.kind === 'chat' && m.job.items.some((i) => i.type === 'text' && i.text === 'die now')) process.exit(7);
});
await import('../../src/model/worker.ts');
