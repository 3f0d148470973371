/**
 * PyTorch checkpoints in the torch>=1.6 zip format (pytorch_model*.bin, *.pth.tar):
 * `<folder>/data.pkl` is a pickle whose tensors are `_rebuild_tensor_v2` calls over
 * persistent-id storages; each storage's bytes are the stored (uncompressed) member
 * `<folder>/data/<key>`. The pickle goes through the safe reader; tensors become file
 * ranges read lazily.
 */
import type { SourceDType } from '../tensor-source.ts';
import { DTYPE_BYTES } from './dtype.ts';
import { CheckpointError } from './errors.ts';
import { elementCount, isContiguous, type TensorEntry } from './file-tensor-source.ts';
import {
  isPickleDict,
  isTorchStorage,
  isTorchTensor,
  parsePickle,
  torchStorageDType,
  type PickleKey,
  type PickleValue,
  type TorchStorageRef,
  type TorchTensorRef,
} from './pickle.ts';
import type { RandomAccessFile } from './random-access.ts';
import { memberDataOffset, readZipDirectory, type ZipMember } from './zip.ts';

/** data.pkl of a huge model is tens of KB; refuse absurd sizes instead of allocating them. */
const MAX_PICKLE_BYTES = 512 << 20;

function storageFromPid(file: string, pid: PickleValue): TorchStorageRef {
  if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== 'storage') {
    throw new CheckpointError(file, 'data.pkl has a persistent id that is not a torch storage');
  }
  const [, cls, key, location, numel] = pid;
  const dtype = torchStorageDType(cls);
  if (!dtype) {
    const what = cls !== null && typeof cls === 'object' && 'name' in cls ? String(cls.name) : String(cls);
    throw new CheckpointError(file, `unsupported torch storage type '${what}' (supported: float32, float16, bfloat16, int64, int32, uint8, int8, bool)`);
  }
  if (typeof key !== 'string' || typeof location !== 'string' || typeof numel !== 'number') {
    throw new CheckpointError(file, 'data.pkl has a malformed storage persistent id');
  }
  return { kind: 'torch-storage', key, dtype, location, numel };
}

/** The tensors of a checkpoint tree: a state dict, or FROMAGe's {'state_dict': OrderedDict}. */
export function collectTensors(root: PickleValue): Array<[string, TorchTensorRef]> {
  const out: Array<[string, TorchTensorRef]> = [];
  if (!isPickleDict(root)) return out;
  const inner = root.get('state_dict');
  const top = inner !== undefined && isPickleDict(inner) ? inner : root;
  const walk = (d: Map<PickleKey, PickleValue>, prefix: string): void => {
    for (const [k, v] of d) {
      if (typeof k !== 'string') continue;
      if (isTorchTensor(v)) out.push([prefix + k, v]);
      else if (isPickleDict(v)) walk(v, `${prefix}${k}.`);
    }
  };
  walk(top, '');
  return out;
}

function findArchiveFolder(file: string, members: readonly ZipMember[]): string {
  const pkl = members.filter((m) => /^[^/]+\/data\.pkl$/.test(m.name));
  if (pkl.length !== 1) {
    throw new CheckpointError(
      file,
      pkl.length === 0
        ? 'zip archive has no <folder>/data.pkl: it is not a PyTorch checkpoint'
        : 'zip archive has several data.pkl records: not a single PyTorch checkpoint',
    );
  }
  return pkl[0].name.slice(0, -'data.pkl'.length);
}

async function memberBytes(file: RandomAccessFile, m: ZipMember): Promise<Uint8Array> {
  if (m.method !== 0) {
    throw new CheckpointError(file.path, `zip member '${m.name}' is compressed (method ${m.method}); torch.save stores members uncompressed`);
  }
  if (m.size > MAX_PICKLE_BYTES) throw new CheckpointError(file.path, `zip member '${m.name}' is implausibly large (${m.size} bytes)`);
  return file.read(await memberDataOffset(file, m), m.size);
}

/** Lists a torch zip checkpoint's tensors as lazy file ranges. */
export async function readTorchZipEntries(file: RandomAccessFile): Promise<TensorEntry[]> {
  const members = await readZipDirectory(file);
  const folder = findArchiveFolder(file.path, members);
  const byName = new Map(members.map((m) => [m.name, m]));
  const byteorder = byName.get(`${folder}byteorder`);
  if (byteorder) {
    const order = new TextDecoder().decode(await memberBytes(file, byteorder)).trim();
    if (order !== 'little') throw new CheckpointError(file.path, `checkpoint was saved on a ${order}-endian machine; only little-endian is supported`);
  }
  const pickleMember = byName.get(`${folder}data.pkl`) as ZipMember;
  const root = parsePickle(await memberBytes(file, pickleMember), `${file.path} (${pickleMember.name})`, {
    persistentLoad: (pid) => storageFromPid(file.path, pid),
  });
  const tensors = collectTensors(root);
  if (tensors.length === 0) throw new CheckpointError(file.path, 'checkpoint holds no tensors (expected a state dict)');

  const storageOffsets = new Map<string, number>();
  const entries: TensorEntry[] = [];
  for (const [name, t] of tensors) {
    const storage = t.storage;
    if (!isTorchStorage(storage)) throw new CheckpointError(file.path, `tensor '${name}' is not backed by a torch storage`);
    const dtype: SourceDType = storage.dtype;
    const size = DTYPE_BYTES[dtype];
    const member = byName.get(`${folder}data/${storage.key}`);
    if (!member) throw new CheckpointError(file.path, `storage '${storage.key}' of tensor '${name}' is missing from the archive`);
    if (member.method !== 0) throw new CheckpointError(file.path, `storage member '${member.name}' is compressed; torch.save stores members uncompressed`);
    if (member.size < storage.numel * size) {
      throw new CheckpointError(file.path, `storage '${storage.key}' holds ${member.size} bytes, fewer than its ${storage.numel} ${dtype} elements need`);
    }
    if (t.shape.length !== t.stride.length) throw new CheckpointError(file.path, `tensor '${name}' has mismatched size and stride`);
    const n = elementCount(t.shape);
    const extent = n === 0 ? 0 : t.shape.reduce((acc, d, i) => acc + (d - 1) * t.stride[i], 0) + 1;
    if (t.storageOffset + extent > storage.numel) {
      throw new CheckpointError(file.path, `tensor '${name}' reaches past the end of its storage '${storage.key}'`);
    }
    let base = storageOffsets.get(storage.key);
    if (base === undefined) {
      base = await memberDataOffset(file, member);
      storageOffsets.set(storage.key, base);
    }
    const contiguous = isContiguous(t.shape, t.stride);
    entries.push({
      name,
      dtype,
      shape: t.shape,
      file: file.path,
      offset: base + t.storageOffset * size,
      ...(contiguous ? {} : { strides: t.stride }),
    });
  }
  return entries;
}
