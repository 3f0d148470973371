/**
 * A small DSL for writing one ONNX model file with streamed external weights.
 *
 * Usage:
 *   const g = await OnnxGraphWriter.create('/out/decoder.onnx', { name: 'decoder' });
 *   const x = g.input('x', 'FLOAT', ['batch', 64]);
 *   const w = await g.weight('w', 'FLOAT', [64, 32], bytes);   // appended to decoder.onnx.data now
 *   g.output('y', 'FLOAT', ['batch', 32], g.op('MatMul', [x, w]));
 *   await g.finish();                                          // writes decoder.onnx (small)
 *
 * Weights at or above `inlineLimit` bytes go to `<model file>.data` as soon as they are given,
 * each aligned to `align` bytes (ORT can then mmap them), so a 13 GB model never sits in
 * memory; only the graph structure (nodes, names, small constants) is kept until `finish()`.
 * Loading needs the file path (`InferenceSession.create(path)`) so the data file resolves.
 */
import { open, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import {
  DATA_TYPE_BYTES,
  encodeModel,
  type AttributeValue,
  type DataTypeName,
  type Dim,
  type NodeSpec,
  type TensorProtoSpec,
  type ValueInfo,
} from './onnx-proto.ts';

export const IR_VERSION = 10;
export const AI_ONNX_OPSET = 17;
export const MS_DOMAIN = 'com.microsoft';

/** Attribute helpers, so ints and floats are never confused. */
export const attr = {
  int: (value: number): AttributeValue => ({ kind: 'int', value }),
  float: (value: number): AttributeValue => ({ kind: 'float', value }),
  string: (value: string): AttributeValue => ({ kind: 'string', value }),
  ints: (value: readonly number[]): AttributeValue => ({ kind: 'ints', value }),
  floats: (value: readonly number[]): AttributeValue => ({ kind: 'floats', value }),
};

export interface GraphWriterOptions {
  /** Graph name stored in the model. */
  name: string;
  /** Tensors smaller than this stay inside the .onnx file (default 1 KiB). */
  inlineLimit?: number;
  /** Alignment of each tensor in the data file (default 4096). */
  align?: number;
  /** ai.onnx opset version (default 17); com.microsoft 1 is added when a node uses it. */
  opset?: number;
  producerVersion?: string;
  docString?: string;
}

export interface OpOptions {
  domain?: string;
  /** Output names to use (undefined entries get fresh names); the length sets the output count. */
  outputs?: readonly (string | undefined)[];
  /** Number of fresh outputs when `outputs` is not given (default 1). */
  numOutputs?: number;
  name?: string;
}

export class OnnxGraphWriter {
  private readonly nodes: NodeSpec[] = [];
  private readonly initializers: TensorProtoSpec[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private readonly usedNames = new Set<string>();
  private readonly domains = new Set<string>();
  private counter = 0;
  private dataOffset = 0;
  private closed = false;

  private constructor(
    readonly modelPath: string,
    readonly dataPath: string,
    private readonly data: FileHandle,
    private readonly options: Required<Pick<GraphWriterOptions, 'inlineLimit' | 'align'>> & GraphWriterOptions,
  ) {}

  static async create(modelPath: string, options: GraphWriterOptions): Promise<OnnxGraphWriter> {
    const dataPath = `${modelPath}.data`;
    const data = await open(dataPath, 'w');
    return new OnnxGraphWriter(modelPath, dataPath, data, { inlineLimit: 1024, align: 4096, ...options });
  }

  /** A fresh value name starting with `prefix`. */
  fresh(prefix: string): string {
    let name: string;
    do name = `${prefix}_${this.counter++}`;
    while (this.usedNames.has(name));
    this.usedNames.add(name);
    return name;
  }

  private claim(name: string): string {
    if (this.usedNames.has(name)) throw new Error(`ONNX value name used twice: ${name}`);
    this.usedNames.add(name);
    return name;
  }

  input(name: string, elemType: DataTypeName, shape: readonly Dim[]): string {
    this.inputs.push({ name: this.claim(name), elemType, shape });
    return name;
  }

  /** Declares a graph output; `from` is renamed through an Identity node when it differs. */
  output(name: string, elemType: DataTypeName, shape: readonly Dim[], from: string): void {
    if (from !== name) this.op('Identity', [from], {}, { outputs: [name] });
    this.outputs.push({ name, elemType, shape });
  }

  /** Adds a node; returns its outputs (use `op1` for single-output nodes). */
  ops(opType: string, inputs: readonly string[], attributes: Record<string, AttributeValue> = {}, o: OpOptions = {}): string[] {
    const prefix = opType.toLowerCase();
    const outputs = o.outputs
      ? o.outputs.map((n) => (n === undefined ? this.fresh(prefix) : this.claim(n)))
      : Array.from({ length: o.numOutputs ?? 1 }, () => this.fresh(prefix));
    if (o.domain) this.domains.add(o.domain);
    this.nodes.push({ opType, domain: o.domain, name: o.name ?? `${opType}_${this.nodes.length}`, inputs, outputs, attributes });
    return outputs;
  }

  /** Adds a single-output node and returns the output name. */
  op(opType: string, inputs: readonly string[], attributes: Record<string, AttributeValue> = {}, o: OpOptions = {}): string {
    return this.ops(opType, inputs, attributes, o)[0];
  }

  /**
   * Adds an initializer. Large ones are appended to the data file now; the caller may reuse or
   * drop `bytes` as soon as the promise resolves.
   */
  async weight(name: string, dataType: DataTypeName, dims: readonly number[], bytes: Uint8Array): Promise<string> {
    const expected = dims.reduce((a, b) => a * b, 1) * DATA_TYPE_BYTES[dataType];
    if (bytes.length !== expected) {
      throw new Error(`weight ${name}: ${bytes.length} bytes given, dims [${dims.join(', ')}] of ${dataType} need ${expected}`);
    }
    this.claim(name);
    if (bytes.length < this.options.inlineLimit) {
      this.initializers.push({ name, dataType, dims: [...dims], raw: bytes.slice() });
      return name;
    }
    const pad = (this.options.align - (this.dataOffset % this.options.align)) % this.options.align;
    if (pad > 0) {
      await this.data.write(new Uint8Array(pad), 0, pad, this.dataOffset);
      this.dataOffset += pad;
    }
    const offset = this.dataOffset;
    let written = 0;
    while (written < bytes.length) {
      const { bytesWritten } = await this.data.write(bytes, written, bytes.length - written, offset + written);
      written += bytesWritten;
    }
    this.dataOffset += bytes.length;
    this.initializers.push({
      name,
      dataType,
      dims: [...dims],
      external: { location: basename(this.dataPath), offset, length: bytes.length },
    });
    return name;
  }

  /** Small inline constant initializer (shape constants, scalars). */
  constInt64(values: readonly number[], dims: readonly number[] = [values.length], prefix = 'const_i64'): string {
    const b = new Uint8Array(values.length * 8);
    const dv = new DataView(b.buffer);
    values.forEach((v, i) => dv.setBigInt64(i * 8, BigInt(v), true));
    const name = this.fresh(prefix);
    this.initializers.push({ name, dataType: 'INT64', dims: [...dims], raw: b });
    return name;
  }

  constFloat(values: readonly number[], dims: readonly number[] = [values.length], prefix = 'const_f32'): string {
    const name = this.fresh(prefix);
    this.initializers.push({ name, dataType: 'FLOAT', dims: [...dims], raw: new Uint8Array(Float32Array.from(values).buffer) });
    return name;
  }

  /** Bytes written to the data file so far. */
  get externalBytes(): number {
    return this.dataOffset;
  }

  /** Writes the .onnx file and closes the data file. */
  async finish(metadata: Record<string, string> = {}): Promise<void> {
    await this.data.close();
    this.closed = true;
    const opsets = [{ domain: '', version: this.options.opset ?? AI_ONNX_OPSET }];
    if (this.domains.has(MS_DOMAIN)) opsets.push({ domain: MS_DOMAIN, version: 1 });
    const bytes = encodeModel({
      irVersion: IR_VERSION,
      opsets,
      producerName: 'fromage-convert',
      producerVersion: this.options.producerVersion ?? '1',
      docString: this.options.docString,
      graph: { name: this.options.name, nodes: this.nodes, initializers: this.initializers, inputs: this.inputs, outputs: this.outputs },
      metadata,
    });
    await writeFile(this.modelPath, bytes);
    if (this.dataOffset === 0) await rm(this.dataPath, { force: true });
  }

  /** Closes the data file after a failure (the caller removes the directory). */
  async abort(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.data.close();
    }
  }
}
