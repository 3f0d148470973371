// Worker threads do not inherit the TypeScript loader the main thread registered at run time,
// so the model worker registers tsx itself before loading its TypeScript entry.
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');
