// The real model worker, plus a kill switch: any message on the 'fromage-soak-kill-worker'
// broadcast channel makes the thread exit at once, whatever it is doing (a crash at a random
// moment, as an out-of-memory kill would be).
import { BroadcastChannel } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
const killSwitch = new BroadcastChannel('fromage-soak-kill-worker');
killSwitch.onmessage = () => process.exit(9);
killSwitch.unref();
await import('../../src/model/worker.ts');
