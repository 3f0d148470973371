/**
 * A safe pickle reader: an interpreter for pickle protocols 2-5 (and the protocol 0/1 data
 * opcodes) that only ever BUILDS DATA. Python's unpickler imports any global a file names and
 * calls it; this one resolves globals against a short allowlist (tensor rebuild, storages,
 * OrderedDict, numpy array reconstruction, a few builtins) and evaluates each of those by a
 * handler written here. Any other global, an unknown opcode, a bad memo reference or a
 * truncated file is a CheckpointError naming the file.
 *
 * Big byte payloads (a 2.7 GB numpy matrix in cc3m_embeddings.pkl) can stay on disk: with
 * `lazyBytesOver`, BINBYTES/BINBYTES8/BYTEARRAY8 payloads above the threshold come back as
 * {file, offset, length} references, read later in chunks with `iterateLazyBytes`.
 */
import { CheckpointError } from './errors.ts';
import { BufferPickleInput, FilePickleInput, type PickleInput } from './pickle-input.ts';
import { RandomAccessFile } from './random-access.ts';
import type { SourceDType } from '../tensor-source.ts';

export type PickleKey = string | number | bigint | boolean | null;

/** A bytes payload left in the file: `length` bytes at `offset` of `file`. */
export interface LazyBytes {
  readonly kind: 'lazy-bytes';
  readonly file: string;
  readonly offset: number;
  readonly length: number;
}

/** A reference to an allowlisted class or function (never called unless handled here). */
export interface PickleGlobal {
  readonly kind: 'global';
  readonly module: string;
  readonly name: string;
}

export interface NumpyDType {
  readonly kind: 'numpy-dtype';
  /** Type code without byte order, e.g. 'f4', 'f2', 'i8', 'b1', 'u1'. */
  readonly code: string;
  /** '<', '>', '|' or '=' (set by the dtype's pickled state). */
  byteOrder: string;
}

export interface NumpyArray {
  readonly kind: 'numpy-array';
  /** numpy dtype string with byte order, e.g. '<f4', '<f2', '|u1'. */
  dtype: string;
  shape: number[];
  fortranOrder: boolean;
  /** Raw element bytes in C (or Fortran, see fortranOrder) order. */
  data: Uint8Array | LazyBytes;
}

export interface PickleSet {
  readonly kind: 'set';
  readonly frozen: boolean;
  readonly items: PickleValue[];
}

/** torch storage named by a persistent id: ('storage', torch.XStorage, key, location, numel). */
export interface TorchStorageRef {
  readonly kind: 'torch-storage';
  readonly key: string;
  readonly dtype: SourceDType;
  readonly location: string;
  readonly numel: number;
}

/** torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...), not materialised. */
export interface TorchTensorRef {
  readonly kind: 'torch-tensor';
  readonly storage: PickleValue;
  readonly storageOffset: number;
  readonly shape: number[];
  readonly stride: number[];
}

export type PickleValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | LazyBytes
  | PickleValue[]
  | Map<PickleKey, PickleValue>
  | PickleSet
  | PickleGlobal
  | NumpyDType
  | NumpyArray
  | TorchStorageRef
  | TorchTensorRef;

export interface PickleReadOptions {
  /** Resolves persistent ids (PERSID/BINPERSID); without it they are an error. */
  persistentLoad?: (pid: PickleValue) => PickleValue;
  /** File input only: bytes payloads longer than this stay on disk as LazyBytes. */
  lazyBytesOver?: number;
}

const STORAGE_DTYPES: Readonly<Record<string, SourceDType>> = {
  FloatStorage: 'float32',
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ByteStorage: 'uint8',
  CharStorage: 'int8',
  BoolStorage: 'bool',
};

const NUMPY_MODULES = ['numpy.core.multiarray', 'numpy._core.multiarray'];
const NUMPY_NUMERIC = ['numpy.core.numeric', 'numpy._core.numeric'];

/** Every global a file may name. Anything else is refused before it is ever looked at. */
const ALLOWED_GLOBALS = new Set<string>([
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_parameter',
  ...Object.keys(STORAGE_DTYPES).map((s) => `torch.${s}`),
  'torch.DoubleStorage',
  'torch.ShortStorage',
  'collections.OrderedDict',
  ...NUMPY_MODULES.flatMap((m) => [`${m}._reconstruct`, `${m}.scalar`]),
  ...NUMPY_NUMERIC.map((m) => `${m}._frombuffer`),
  'numpy.ndarray',
  'numpy.dtype',
  ...['builtins', '__builtin__'].flatMap((m) => [`${m}.set`, `${m}.frozenset`, `${m}.bytearray`]),
  '_codecs.encode',
]);

/** A storage class name's element dtype, for the torch zip reader's persistent ids. */
export function torchStorageDType(g: PickleValue): SourceDType | undefined {
  if (!isKind(g, 'global') || g.module !== 'torch') return undefined;
  return STORAGE_DTYPES[g.name];
}

function isKind<K extends string>(v: PickleValue, kind: K): v is Extract<PickleValue, { kind: K }> {
  return typeof v === 'object' && v !== null && !(v instanceof Uint8Array) && !Array.isArray(v) && !(v instanceof Map) && v.kind === kind;
}

export function isLazyBytes(v: PickleValue): v is LazyBytes {
  return isKind(v, 'lazy-bytes');
}
export function isNumpyArray(v: PickleValue): v is NumpyArray {
  return isKind(v, 'numpy-array');
}
export function isTorchTensor(v: PickleValue): v is TorchTensorRef {
  return isKind(v, 'torch-tensor');
}
export function isTorchStorage(v: PickleValue): v is TorchStorageRef {
  return isKind(v, 'torch-storage');
}
export function isPickleDict(v: PickleValue): v is Map<PickleKey, PickleValue> {
  return v instanceof Map;
}


const latin1 = new TextDecoder('latin1');

class Interpreter {
  private readonly stack: PickleValue[] = [];
  /** Stack lengths at each open MARK. */
  private readonly marks: number[] = [];
  private readonly memo = new Map<number, PickleValue>();

  constructor(
    private readonly input: PickleInput,
    private readonly options: PickleReadOptions,
  ) {}

  private fail(reason: string): never {
    throw new CheckpointError(this.input.label, reason);
  }

  private pop(): PickleValue {
    if (this.stack.length === 0 || (this.marks.length > 0 && this.stack.length <= this.marks[this.marks.length - 1])) {
      this.fail(`malformed pickle: stack underflow at offset ${this.input.position()}`);
    }
    return this.stack.pop() as PickleValue;
  }

  private top(): PickleValue {
    const v = this.stack[this.stack.length - 1];
    if (v === undefined || (this.marks.length > 0 && this.stack.length <= this.marks[this.marks.length - 1])) this.fail(`malformed pickle: empty stack at offset ${this.input.position()}`);
    return v;
  }

  private popMark(): PickleValue[] {
    const m = this.marks.pop();
    if (m === undefined) this.fail(`malformed pickle: no MARK at offset ${this.input.position()}`);
    return this.stack.splice(m);
  }

  private memoGet(i: number): PickleValue {
    const v = this.memo.get(i);
    if (v === undefined) this.fail(`malformed pickle: memo index ${i} used before it was set (offset ${this.input.position()})`);
    return v;
  }

  private u32(): number {
    const b = this.input.read(4);
    return (b[0] | (b[1] << 8) | (b[2] << 16)) + b[3] * 0x1000000;
  }

  private u64(): number {
    const lo = this.u32();
    const hi = this.u32();
    if (hi >= 0x200000) this.fail('length field exceeds 2^53 (corrupt file)');
    return hi * 0x100000000 + lo;
  }

  private textLine(): string {
    return latin1.decode(this.input.readLine());
  }

  private bytesPayload(n: number): Uint8Array | LazyBytes {
    const threshold = this.options.lazyBytesOver;
    const file = this.input.lazyFile;
    if (file !== undefined && threshold !== undefined && n > threshold) {
      const offset = this.input.skip(n);
      return { kind: 'lazy-bytes', file, offset, length: n };
    }
    return this.input.read(n);
  }

  private str(n: number): string {
    return this.input.readUtf8(n);
  }

  run(): PickleValue {
    const input = this.input;
    const stack = this.stack;
    for (;;) {
      const at = input.position();
      const op = input.readByte();
      switch (op) {
        case 0x80: {
          const proto = input.readByte();
          if (proto > 5) this.fail(`pickle protocol ${proto} is newer than this reader understands (max 5)`);
          break;
        }
        case 0x95: // FRAME: a length hint for buffered readers; our input is already buffered.
          this.u64();
          break;
        case 0x2e: // STOP
          if (stack.length !== 1 || this.marks.length !== 0) this.fail('malformed pickle: STOP with unbalanced stack');
          return this.pop();
        case 0x28: // MARK
          this.marks.push(stack.length);
          break;
        case 0x30: // POP
          if (this.marks.length > 0 && stack.length === this.marks[this.marks.length - 1]) this.marks.pop();
          else this.pop();
          break;
        case 0x31: // POP_MARK
          this.popMark();
          break;
        case 0x32: // DUP
          stack.push(this.top());
          break;
        // --- constants and numbers
        case 0x4e: // NONE
          stack.push(null);
          break;
        case 0x88: // NEWTRUE
          stack.push(true);
          break;
        case 0x89: // NEWFALSE
          stack.push(false);
          break;
        case 0x4b: // BININT1
          stack.push(input.readByte());
          break;
        case 0x4d: {
          // BININT2
          const b = input.read(2);
          stack.push(b[0] | (b[1] << 8));
          break;
        }
        case 0x4a: {
          // BININT
          const b = input.read(4);
          stack.push(b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24));
          break;
        }
        case 0x8a: // LONG1
          stack.push(this.decodeLong(input.read(input.readByte())));
          break;
        case 0x8b: // LONG4
          stack.push(this.decodeLong(input.read(this.u32())));
          break;
        case 0x47: {
          // BINFLOAT (big-endian double)
          const b = input.read(8);
          stack.push(new DataView(b.buffer, b.byteOffset, 8).getFloat64(0, false));
          break;
        }
        case 0x49: {
          // INT (text): '01'/'00' are protocol-0 booleans
          const t = this.textLine();
          if (t === '01') stack.push(true);
          else if (t === '00') stack.push(false);
          else stack.push(this.parseIntText(t));
          break;
        }
        case 0x4c: // LONG (text)
          stack.push(this.parseIntText(this.textLine().replace(/L$/, '')));
          break;
        case 0x46: {
          // FLOAT (text)
          const f = Number(this.textLine());
          if (Number.isNaN(f)) this.fail(`malformed FLOAT at offset ${at}`);
          stack.push(f);
          break;
        }
        // --- strings and bytes
        case 0x8c: // SHORT_BINUNICODE
          stack.push(this.str(input.readByte()));
          break;
        case 0x58: // BINUNICODE
          stack.push(this.str(this.u32()));
          break;
        case 0x8d: // BINUNICODE8
          stack.push(this.str(this.u64()));
          break;
        case 0x56: // UNICODE (raw-unicode-escape text)
          stack.push(this.rawUnicodeEscape(this.textLine()));
          break;
        case 0x55: // SHORT_BINSTRING (py2 str; read as latin-1 text)
          stack.push(latin1.decode(input.read(input.readByte())));
          break;
        case 0x54: // BINSTRING
          stack.push(latin1.decode(input.read(this.u32())));
          break;
        case 0x43: // SHORT_BINBYTES
          stack.push(input.read(input.readByte()));
          break;
        case 0x42: // BINBYTES
          stack.push(this.bytesPayload(this.u32()));
          break;
        case 0x8e: // BINBYTES8
          stack.push(this.bytesPayload(this.u64()));
          break;
        case 0x96: // BYTEARRAY8
          stack.push(this.bytesPayload(this.u64()));
          break;
        case 0x97: // NEXT_BUFFER
          this.fail('pickle uses out-of-band buffers (protocol 5 NEXT_BUFFER), which a file on disk cannot supply');
          break;
        case 0x98: // READONLY_BUFFER: a no-op on the value
          this.top();
          break;
        // --- containers
        case 0x29: // EMPTY_TUPLE
          stack.push(tuple([]));
          break;
        case 0x85: // TUPLE1
          stack.push(tuple([this.pop()]));
          break;
        case 0x86: {
          // TUPLE2
          const b = this.pop();
          const a = this.pop();
          stack.push(tuple([a, b]));
          break;
        }
        case 0x87: {
          // TUPLE3
          const c = this.pop();
          const b = this.pop();
          const a = this.pop();
          stack.push(tuple([a, b, c]));
          break;
        }
        case 0x74: // TUPLE
          stack.push(tuple(this.popMark()));
          break;
        case 0x5d: // EMPTY_LIST
          stack.push([]);
          break;
        case 0x6c: // LIST
          stack.push(this.popMark());
          break;
        case 0x61: {
          // APPEND
          const v = this.pop();
          this.listOnTop().push(v);
          break;
        }
        case 0x65: {
          // APPENDS
          const items = this.popMark();
          const list = this.listOnTop();
          for (const v of items) list.push(v);
          break;
        }
        case 0x7d: // EMPTY_DICT
          stack.push(new Map());
          break;
        case 0x64: {
          // DICT
          const items = this.popMark();
          const d = new Map<PickleKey, PickleValue>();
          this.setItems(d, items);
          stack.push(d);
          break;
        }
        case 0x73: {
          // SETITEM
          const v = this.pop();
          const k = this.pop();
          this.setItems(this.dictOnTop(), [k, v]);
          break;
        }
        case 0x75: {
          // SETITEMS
          const items = this.popMark();
          this.setItems(this.dictOnTop(), items);
          break;
        }
        case 0x8f: // EMPTY_SET
          stack.push({ kind: 'set', frozen: false, items: [] });
          break;
        case 0x90: {
          // ADDITEMS
          const items = this.popMark();
          const s = this.top();
          if (!isKind(s, 'set') || s.frozen) this.fail(`malformed pickle: ADDITEMS on a non-set at offset ${at}`);
          s.items.push(...items);
          break;
        }
        case 0x91: // FROZENSET
          stack.push({ kind: 'set', frozen: true, items: this.popMark() });
          break;
        // --- memo
        case 0x94: // MEMOIZE
          this.memo.set(this.memo.size, this.top());
          break;
        case 0x71: // BINPUT
          this.memo.set(input.readByte(), this.top());
          break;
        case 0x72: // LONG_BINPUT
          this.memo.set(this.u32(), this.top());
          break;
        case 0x70: // PUT
          this.memo.set(this.parseIndex(this.textLine()), this.top());
          break;
        case 0x68: // BINGET
          stack.push(this.memoGet(input.readByte()));
          break;
        case 0x6a: // LONG_BINGET
          stack.push(this.memoGet(this.u32()));
          break;
        case 0x67: // GET
          stack.push(this.memoGet(this.parseIndex(this.textLine())));
          break;
        // --- globals, calls, persistent ids: the only places code could run; none does
        case 0x63: {
          // GLOBAL 'module\nname\n'
          const module = this.textLine();
          const name = this.textLine();
          stack.push(this.resolveGlobal(module, name));
          break;
        }
        case 0x93: {
          // STACK_GLOBAL
          const name = this.pop();
          const module = this.pop();
          if (typeof module !== 'string' || typeof name !== 'string') this.fail(`malformed STACK_GLOBAL at offset ${at}`);
          stack.push(this.resolveGlobal(module, name));
          break;
        }
        case 0x52: {
          // REDUCE
          const args = this.pop();
          const fn = this.pop();
          stack.push(this.call(fn, this.asArgs(args, at)));
          break;
        }
        case 0x81: {
          // NEWOBJ
          const args = this.pop();
          const cls = this.pop();
          stack.push(this.call(cls, this.asArgs(args, at)));
          break;
        }
        case 0x92: {
          // NEWOBJ_EX
          const kwargs = this.pop();
          const args = this.pop();
          const cls = this.pop();
          if (!(kwargs instanceof Map) || kwargs.size > 0) this.fail(`NEWOBJ_EX with keyword arguments is not supported (offset ${at})`);
          stack.push(this.call(cls, this.asArgs(args, at)));
          break;
        }
        case 0x62: {
          // BUILD
          const state = this.pop();
          this.build(this.top(), state, at);
          break;
        }
        case 0x51: // BINPERSID
          stack.push(this.persistent(this.pop()));
          break;
        case 0x50: // PERSID
          stack.push(this.persistent(this.textLine()));
          break;
        case 0x69: // INST
        case 0x6f: // OBJ
        case 0x82: // EXT1
        case 0x83: // EXT2
        case 0x84: // EXT4
          this.fail(
            `pickle opcode 0x${op.toString(16)} at offset ${at} creates objects outside the allowlist; refusing (the file may be malicious)`,
          );
          break;
        case 0x53: // STRING (protocol 0 quoted repr)
          this.fail(`protocol-0 STRING opcode at offset ${at} is not supported; re-save the file with pickle protocol 2 or newer`);
          break;
        default:
          this.fail(`unknown pickle opcode 0x${op.toString(16).padStart(2, '0')} at offset ${at} (corrupt file or not a pickle)`);
      }
    }
  }

  private listOnTop(): PickleValue[] {
    const l = this.top();
    if (!Array.isArray(l) || Object.isFrozen(l)) this.fail(`malformed pickle: append to a non-list at offset ${this.input.position()}`);
    return l;
  }

  private dictOnTop(): Map<PickleKey, PickleValue> {
    const d = this.top();
    if (!(d instanceof Map)) this.fail(`malformed pickle: setitem on a non-dict at offset ${this.input.position()}`);
    return d;
  }

  private setItems(d: Map<PickleKey, PickleValue>, items: PickleValue[]): void {
    if (items.length % 2 !== 0) this.fail('malformed pickle: odd number of dict items');
    for (let i = 0; i < items.length; i += 2) {
      const k = items[i];
      if (k !== null && typeof k === 'object') this.fail('dict keys other than str/int/bool/None are not supported');
      d.set(k, items[i + 1]);
    }
  }

  private asArgs(args: PickleValue, at: number): PickleValue[] {
    if (!Array.isArray(args)) this.fail(`malformed pickle: call arguments are not a tuple (offset ${at})`);
    return args;
  }

  private parseIntText(t: string): number | bigint {
    if (!/^[-+]?\d+$/.test(t)) this.fail(`malformed integer ${JSON.stringify(t)}`);
    const big = BigInt(t);
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }

  private parseIndex(t: string): number {
    const n = this.parseIntText(t);
    if (typeof n !== 'number' || n < 0) this.fail(`malformed memo index ${JSON.stringify(t)}`);
    return n;
  }

  private decodeLong(b: Uint8Array): number | bigint {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }

  private rawUnicodeEscape(t: string): string {
    return t.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, u4: string | undefined, u8: string | undefined) =>
      String.fromCodePoint(parseInt(u4 ?? u8 ?? '0', 16)),
    );
  }

  private persistent(pid: PickleValue): PickleValue {
    if (!this.options.persistentLoad) {
      this.fail('pickle references external storage (persistent id) but was not read as part of a torch checkpoint');
    }
    return this.options.persistentLoad(pid);
  }

  private resolveGlobal(module: string, name: string): PickleGlobal {
    const full = `${module}.${name}`;
    if (!ALLOWED_GLOBALS.has(full)) {
      this.fail(
        `pickle refers to the Python global '${full}', which is not on the allowlist of data-only types; ` +
          'refusing to load it (the file may be malicious, or is not a model checkpoint / embedding index)',
      );
    }
    return { kind: 'global', module, name };
  }

  private call(fn: PickleValue, args: PickleValue[]): PickleValue {
    if (!isKind(fn, 'global')) this.fail('malformed pickle: call of a value that is not a global');
    const name = fn.name;
    const module = fn.module;
    if (module === 'collections' && name === 'OrderedDict') {
      if (args.length > 0) this.fail('OrderedDict(...) with initial items is not supported');
      return new Map();
    }
    if (module === 'torch._utils' && name === '_rebuild_tensor_v2') return this.rebuildTensor(args);
    if (module === 'torch._utils' && name === '_rebuild_parameter') return args[0] ?? this.fail('_rebuild_parameter without data');
    if (name === '_reconstruct' && NUMPY_MODULES.includes(module)) {
      // ndarray placeholder; its BUILD state fills dtype, shape and data.
      return { kind: 'numpy-array', dtype: '', shape: [], fortranOrder: false, data: new Uint8Array(0) };
    }
    if (name === '_frombuffer' && NUMPY_NUMERIC.includes(module)) return this.fromBuffer(args);
    if (name === 'scalar' && NUMPY_MODULES.includes(module)) return this.numpyScalar(args);
    if (module === 'numpy' && name === 'dtype') {
      const code = args[0];
      if (typeof code !== 'string') this.fail('numpy.dtype(...) with a non-string type code');
      return { kind: 'numpy-dtype', code, byteOrder: code === 'b1' || code.endsWith('1') ? '|' : '=' };
    }
    if (module === '_codecs' && name === 'encode') {
      const [text, encoding] = args;
      if (typeof text !== 'string' || (encoding !== 'latin1' && encoding !== 'latin-1')) {
        this.fail('_codecs.encode is only supported for latin-1 text (numpy bytes in protocol 2)');
      }
      return Uint8Array.from(text, (c) => c.charCodeAt(0));
    }
    if (name === 'bytearray') {
      const [src] = args;
      if (src === undefined) return new Uint8Array(0);
      if (src instanceof Uint8Array) return src;
      if (typeof src === 'string') return Uint8Array.from(src, (c) => c.charCodeAt(0));
      this.fail('bytearray(...) of an unsupported value');
    }
    if (name === 'set' || name === 'frozenset') {
      const [src] = args;
      if (src !== undefined && !Array.isArray(src)) this.fail(`${name}(...) of a non-list`);
      return { kind: 'set', frozen: name === 'frozenset', items: src ? [...src] : [] };
    }
    this.fail(`the global '${module}.${name}' may only appear as a type tag, not be called`);
  }

  private intArg(v: PickleValue, what: string): number {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) this.fail(`_rebuild_tensor_v2: ${what} is not a non-negative integer`);
    return v;
  }

  private intTuple(v: PickleValue, what: string): number[] {
    if (!Array.isArray(v)) this.fail(`_rebuild_tensor_v2: ${what} is not a tuple`);
    return v.map((x) => this.intArg(x, what));
  }

  private rebuildTensor(args: PickleValue[]): TorchTensorRef {
    if (args.length < 4) this.fail('_rebuild_tensor_v2 called with too few arguments');
    return {
      kind: 'torch-tensor',
      storage: args[0],
      storageOffset: this.intArg(args[1], 'storage offset'),
      shape: this.intTuple(args[2], 'size'),
      stride: this.intTuple(args[3], 'stride'),
    };
  }

  private fromBuffer(args: PickleValue[]): NumpyArray {
    const [buf, dtype, shape, order] = args;
    if (!(buf instanceof Uint8Array) && !isKind(buf, 'lazy-bytes')) this.fail('numpy _frombuffer without a bytes buffer');
    if (!isKind(dtype, 'numpy-dtype')) this.fail('numpy _frombuffer without a dtype');
    if (!Array.isArray(shape)) this.fail('numpy _frombuffer without a shape');
    return {
      kind: 'numpy-array',
      dtype: numpyDTypeString(dtype),
      shape: shape.map((d) => this.intArg(d, 'numpy shape')),
      fortranOrder: order === 'F',
      data: buf,
    };
  }

  private numpyScalar(args: PickleValue[]): PickleValue {
    const [dtype, raw] = args;
    if (!isKind(dtype, 'numpy-dtype') || !(raw instanceof Uint8Array)) this.fail('malformed numpy scalar');
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const le = dtype.byteOrder !== '>';
    switch (dtype.code) {
      case 'f8':
        return view.getFloat64(0, le);
      case 'f4':
        return view.getFloat32(0, le);
      case 'i8':
        return Number(view.getBigInt64(0, le));
      case 'i4':
        return view.getInt32(0, le);
      case 'u1':
        return raw[0];
      case 'b1':
        return raw[0] !== 0;
      default:
        return { kind: 'numpy-array', dtype: numpyDTypeString(dtype), shape: [], fortranOrder: false, data: raw };
    }
  }

  private build(target: PickleValue, state: PickleValue, at: number): void {
    if (isKind(target, 'numpy-array')) {
      if (!Array.isArray(state) || state.length < 4) this.fail(`malformed ndarray state at offset ${at}`);
      // (version, shape, dtype, is_fortran, rawdata); version is absent in old pickles.
      const s = state.length === 5 ? state.slice(1) : state;
      const [shape, dtype, fortran, rawData] = s;
      // Python 2 pickles carry the raw bytes as a (latin-1) str.
      const data = typeof rawData === 'string' ? Uint8Array.from(rawData, (c) => c.charCodeAt(0)) : rawData;
      if (!Array.isArray(shape) || !isKind(dtype, 'numpy-dtype')) this.fail(`malformed ndarray state at offset ${at}`);
      if (!(data instanceof Uint8Array) && !isKind(data, 'lazy-bytes')) {
        this.fail(`numpy array of dtype '${dtype.code}' holds Python objects, which this reader refuses (offset ${at})`);
      }
      target.shape = shape.map((d) => this.intArg(d, 'numpy shape'));
      target.dtype = numpyDTypeString(dtype);
      target.fortranOrder = fortran === true;
      target.data = data;
      return;
    }
    if (isKind(target, 'numpy-dtype')) {
      if (!Array.isArray(state) || state.length < 2 || typeof state[1] !== 'string') this.fail(`malformed dtype state at offset ${at}`);
      if (state.length >= 5 && (state[3] !== null || state[4] !== null)) this.fail('structured numpy dtypes are not supported');
      target.byteOrder = state[1];
      return;
    }
    if (target instanceof Map) {
      // OrderedDict instance attributes (torch's `_metadata`): not tensor data, dropped.
      return;
    }
    this.fail(`BUILD on an unsupported object at offset ${at}`);
  }
}

/** Tuples are frozen arrays, so a list (mutable) and a tuple can still be told apart. */
function tuple(items: PickleValue[]): PickleValue[] {
  Object.freeze(items);
  return items;
}

function numpyDTypeString(d: NumpyDType): string {
  const order = d.byteOrder === '=' ? '<' : d.byteOrder;
  return `${order}${d.code}`;
}

/** Parses a pickle held in memory (e.g. a torch zip's data.pkl). `label` names it in errors. */
export function parsePickle(bytes: Uint8Array, label: string, options: PickleReadOptions = {}): PickleValue {
  return new Interpreter(new BufferPickleInput(bytes, label), options).run();
}

/**
 * Parses a pickle file with windowed synchronous reads; with `lazyBytesOver` large bytes
 * payloads stay on disk as LazyBytes. Memory is the data tree minus those payloads.
 */
export function readPickleFile(path: string, options: PickleReadOptions = {}): PickleValue {
  const input = new FilePickleInput(path);
  try {
    return new Interpreter(input, options).run();
  } finally {
    input.close();
  }
}

/** Reads a lazy payload whole (fine for small ones; prefer iterateLazyBytes for big ones). */
export async function readLazyBytes(ref: LazyBytes): Promise<Uint8Array> {
  const f = await RandomAccessFile.open(ref.file);
  try {
    return await f.read(ref.offset, ref.length);
  } finally {
    await f.close();
  }
}

/**
 * Streams a lazy payload in chunks of `chunkBytes` (rounded down to `alignTo`, e.g. a matrix
 * row's byte size, so every chunk holds whole rows). Each chunk is a fresh buffer.
 */
export async function* iterateLazyBytes(ref: LazyBytes, chunkBytes = 16 << 20, alignTo = 1): AsyncGenerator<Uint8Array> {
  const step = Math.max(alignTo, chunkBytes - (chunkBytes % alignTo));
  const f = await RandomAccessFile.open(ref.file);
  try {
    for (let done = 0; done < ref.length; done += step) {
      yield await f.read(ref.offset + done, Math.min(step, ref.length - done));
    }
  } finally {
    await f.close();
  }
}
