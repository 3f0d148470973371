// The child process of src/model/prepared-decoder.ts: saves or loads a prepared decoder and
// answers the probe's hash. It is a separate process so that onnxruntime crashing on a copy it
// cannot map ends this process, not the caller. Like the model worker, it registers tsx itself.
import { register } from 'tsx/esm/api';

register();
const { runChildRequest } = await import('./prepared-decoder.ts');
process.once('message', async (req) => {
  const reply = await runChildRequest(req);
  process.send(reply, () => process.exit(0));
});
