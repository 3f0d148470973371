/**
 * ONNX message encoders (field numbers from onnx/onnx.proto3) over plain TypeScript types.
 * Only the subset a converter needs: ModelProto, GraphProto, NodeProto, AttributeProto,
 * TensorProto (raw or external data) and tensor ValueInfoProto.
 */
import { ProtoMessage } from './protobuf.ts';

/** TensorProto.DataType values. */
export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  BFLOAT16: 16,
} as const;
export type DataTypeName = keyof typeof DataType;

/** Bytes per element of each data type. */
export const DATA_TYPE_BYTES: Record<DataTypeName, number> = {
  FLOAT: 4,
  UINT8: 1,
  INT8: 1,
  INT32: 4,
  INT64: 8,
  BOOL: 1,
  FLOAT16: 2,
  DOUBLE: 8,
  BFLOAT16: 2,
};

/** A dimension: a fixed size or a symbolic name (e.g. 'batch'). */
export type Dim = number | string;

export interface ValueInfo {
  name: string;
  elemType: DataTypeName;
  /** undefined = unknown rank. */
  shape?: readonly Dim[];
}

export interface ExternalLocation {
  /** File name relative to the model file's directory. */
  location: string;
  offset: number;
  length: number;
}

export interface TensorProtoSpec {
  name: string;
  dataType: DataTypeName;
  dims: readonly number[];
  /** Little-endian bytes stored inside the proto (small tensors). */
  raw?: Uint8Array;
  /** Bytes stored in an external data file (large tensors). */
  external?: ExternalLocation;
}

export type AttributeValue =
  | { kind: 'int'; value: number }
  | { kind: 'float'; value: number }
  | { kind: 'string'; value: string }
  | { kind: 'ints'; value: readonly number[] }
  | { kind: 'floats'; value: readonly number[] }
  | { kind: 'tensor'; value: TensorProtoSpec };

export interface NodeSpec {
  opType: string;
  domain?: string;
  name?: string;
  inputs: readonly string[];
  outputs: readonly string[];
  attributes?: Record<string, AttributeValue>;
}

export interface GraphSpec {
  name: string;
  nodes: readonly NodeSpec[];
  initializers: readonly TensorProtoSpec[];
  inputs: readonly ValueInfo[];
  outputs: readonly ValueInfo[];
}

export interface ModelSpec {
  irVersion: number;
  opsets: readonly { domain: string; version: number }[];
  producerName: string;
  producerVersion: string;
  docString?: string;
  graph: GraphSpec;
  metadata?: Record<string, string>;
}

// AttributeProto.AttributeType
const ATTR_TYPE = { float: 1, int: 2, string: 3, tensor: 4, floats: 6, ints: 7 } as const;

export function encodeTensor(t: TensorProtoSpec): ProtoMessage {
  const m = new ProtoMessage();
  m.packedVarints(1, t.dims);
  m.varint(2, DataType[t.dataType]);
  m.string(8, t.name);
  if (t.raw && t.external) throw new Error(`tensor ${t.name}: both raw and external data given`);
  if (t.raw) m.bytes(9, t.raw);
  if (t.external) {
    const entry = (k: string, v: string) => new ProtoMessage().string(1, k).string(2, v);
    m.message(13, entry('location', t.external.location));
    m.message(13, entry('offset', String(t.external.offset)));
    m.message(13, entry('length', String(t.external.length)));
    m.varint(14, 1); // data_location = EXTERNAL
  }
  return m;
}

function encodeAttribute(name: string, a: AttributeValue): ProtoMessage {
  const m = new ProtoMessage().string(1, name);
  switch (a.kind) {
    case 'float':
      m.float(2, a.value);
      break;
    case 'int':
      m.varint(3, a.value);
      break;
    case 'string':
      m.string(4, a.value);
      break;
    case 'tensor':
      m.message(5, encodeTensor(a.value));
      break;
    case 'floats':
      m.packedFloats(7, a.value);
      break;
    case 'ints':
      m.packedVarints(8, a.value);
      break;
  }
  m.varint(20, ATTR_TYPE[a.kind]);
  return m;
}

function encodeNode(n: NodeSpec): ProtoMessage {
  const m = new ProtoMessage();
  for (const i of n.inputs) m.string(1, i);
  for (const o of n.outputs) m.string(2, o);
  if (n.name) m.string(3, n.name);
  m.string(4, n.opType);
  for (const [k, v] of Object.entries(n.attributes ?? {})) m.message(5, encodeAttribute(k, v));
  if (n.domain) m.string(7, n.domain);
  return m;
}

function encodeValueInfo(v: ValueInfo): ProtoMessage {
  const tensorType = new ProtoMessage().varint(1, DataType[v.elemType]);
  if (v.shape) {
    const shape = new ProtoMessage();
    for (const d of v.shape) {
      shape.message(1, typeof d === 'number' ? new ProtoMessage().varint(1, d) : new ProtoMessage().string(2, d));
    }
    tensorType.message(2, shape);
  }
  const type = new ProtoMessage().message(1, tensorType);
  return new ProtoMessage().string(1, v.name).message(2, type);
}

export function encodeGraph(g: GraphSpec): ProtoMessage {
  const m = new ProtoMessage();
  for (const n of g.nodes) m.message(1, encodeNode(n));
  m.string(2, g.name);
  for (const t of g.initializers) m.message(5, encodeTensor(t));
  for (const i of g.inputs) m.message(11, encodeValueInfo(i));
  for (const o of g.outputs) m.message(12, encodeValueInfo(o));
  return m;
}

/** The serialized ModelProto. */
export function encodeModel(model: ModelSpec): Uint8Array {
  const m = new ProtoMessage();
  m.varint(1, model.irVersion);
  m.string(2, model.producerName);
  m.string(3, model.producerVersion);
  if (model.docString) m.string(6, model.docString);
  m.message(7, encodeGraph(model.graph));
  for (const o of model.opsets) m.message(8, new ProtoMessage().string(1, o.domain).varint(2, o.version));
  for (const [k, v] of Object.entries(model.metadata ?? {})) m.message(14, new ProtoMessage().string(1, k).string(2, v));
  return m.finish();
}
