/**
 * The CC3M retrieval index cannot be scripted: FROMAGe publishes the embeddings on Google Drive
 * (behind a confirmation page), so setup prints where to get them and the one import command.
 */
import { join } from 'node:path';

export const FROMAGE_README = 'https://github.com/kohjingyu/fromage#precomputed-embeddings-for-image-retrieval';

export function cc3mInstructions(checkpointsDir: string, bundleDir?: string): string {
  const out = join(checkpointsDir, 'cc3m-index');
  return [
    'Image retrieval (optional): the CC3M image index is not downloaded by setup.',
    `  1. Download cc3m_embeddings.pkl (about 3 GB) from the Google Drive link in the FROMAGe README:`,
    `     ${FROMAGE_README}`,
    `  2. npx fromage index import cc3m_embeddings.pkl --out ${out}${bundleDir ? ` --bundle ${bundleDir}` : ''}`,
    `  3. Add FROMAGE_INDEX=${out} to .env`,
    'Without an index the bot still chats; when the model asks for an image it says why it cannot show one.',
  ].join('\n');
}
