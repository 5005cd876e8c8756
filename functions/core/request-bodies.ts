import compacted from './request-schemas.json' with { type: 'json' };
import { asRecord } from './values';

/**
 * Request bodies checked the way OpenAI checks them, before anything is sent: each batch endpoint's
 * request schema from OpenAI's published spec (compacted into request-schemas.json by
 * test/fixtures/openapi/extract.ts), plus the rules OpenAI enforces beyond it (empty `tools`, strict
 * `json_schema` formats: see strictFormatProblem). Prepare
 * refuses what OpenAI would refuse; the emulator answers it with OpenAI's 400. Only type, enum, range,
 * length and required violations the spec states are refused: unknown parameters, formats and
 * patterns pass, and so does `null` for an optional parameter.
 */

/** What OpenAI answers a body it refuses with: the `error` of its 400 response. */
export interface BodyProblem {
  /** OpenAI's code: `invalid_type`, `empty_array`, `decimal_above_max_value`, ...; null where it gives none. */
  readonly code: string | null;
  /** The parameter, as OpenAI names it: `tools`, `messages[0].content`. */
  readonly param: string;
  /** OpenAI's message, naming the parameter and the rule. */
  readonly message: string;
}

/** A schema node as request-schemas.json holds it. */
interface Node {
  readonly $ref?: string;
  readonly type?: readonly string[];
  readonly enum?: readonly unknown[];
  readonly minimum?: number;
  readonly maximum?: number;
  readonly exclusiveMinimum?: number;
  readonly exclusiveMaximum?: number;
  readonly minLength?: number;
  readonly maxLength?: number;
  readonly minItems?: number;
  readonly maxItems?: number;
  readonly required?: readonly string[];
  readonly properties?: Readonly<Record<string, Node>>;
  readonly items?: Node;
  readonly anyOf?: readonly Node[];
  readonly allOf?: readonly Node[];
  readonly discriminator?: string;
  readonly additionalProperties?: Node;
}

/** A failure on the way back up: the rule, and the path from the failing value to the top (reversed). */
interface Failure {
  readonly code: string;
  readonly path: (string | number)[];
  readonly describe: (param: string) => string;
}

type Check = (value: unknown) => Failure | undefined;

const SCHEMAS = compacted.schemas as unknown as Record<string, Node>;
const ENDPOINT_SCHEMAS = compacted.endpoints as Record<string, string>;

/** The JSON type of a value, as JSON Schema names them ('integer' for whole numbers). */
function jsonType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  const type = typeof value;
  if (type === 'number') return Number.isInteger(value) ? 'integer' : 'number';
  return type;
}

const A: Record<string, string> = {
  string: 'a string',
  integer: 'an integer',
  number: 'a decimal',
  boolean: 'a boolean',
  object: 'an object',
  array: 'an array',
  null: 'null',
};
/** What a value is, in OpenAI's words ("but got a decimal number instead"). */
const GOT: Record<string, string> = { ...A, number: 'a decimal number', undefined: 'nothing' };

function list(values: readonly unknown[]): string {
  const quoted = values.map((v) => `'${String(v)}'`);
  if (quoted.length <= 2) return quoted.join(' and ');
  return `${quoted.slice(0, -1).join(', ')}, and ${quoted.at(-1)}`;
}

function fail(code: string, describe: (param: string) => string): Failure {
  return { code, path: [], describe };
}

const compiled = new Map<string, Check>();

/** The check of a named schema, compiled once (recursive schemas refer to it before it is built). */
function named(name: string): Check {
  const known = compiled.get(name);
  if (known) return known;
  let check: Check | undefined;
  const deferred: Check = (value) => {
    if (!check) {
      const node = SCHEMAS[name];
      check = node ? compile(node) : () => undefined;
    }
    return check(value);
  };
  compiled.set(name, deferred);
  return deferred;
}

/** The node a $ref names, followed through refs (for reading types and discriminators). */
function resolved(node: Node, depth = 0): Node {
  if (node.$ref && depth < 20) {
    const target = SCHEMAS[node.$ref];
    if (target) return resolved(target, depth + 1);
  }
  return node;
}

/** The JSON types a node accepts, or null when it accepts any. */
function typesOf(node: Node, depth = 0): Set<string> | null {
  const target = resolved(node);
  if (target.type) return new Set(target.type);
  if (target.anyOf && depth < 10) {
    const out = new Set<string>();
    for (const branch of target.anyOf) {
      const types = typesOf(branch, depth + 1);
      if (!types) return null;
      for (const t of types) out.add(t);
    }
    return out;
  }
  if (target.enum) return new Set(target.enum.map(jsonType));
  if (target.allOf) {
    for (const part of target.allOf) {
      const types = typesOf(part, depth + 1);
      if (types) return types;
    }
  }
  if (target.properties || target.required) return new Set(['object']);
  return null;
}

function accepts(types: Set<string> | null, type: string): boolean {
  return !types || types.has(type) || (type === 'integer' && types.has('number'));
}

/** The values a branch's discriminator property takes, from its enum (looking into allOf parts). */
function discriminatorValues(node: Node, property: string, depth = 0): readonly unknown[] | null {
  const target = resolved(node);
  const own = target.properties?.[property];
  if (own) return resolved(own).enum ?? null;
  for (const part of target.allOf ?? []) {
    const found = depth < 5 ? discriminatorValues(part, property, depth + 1) : null;
    if (found) return found;
  }
  return null;
}

function compile(node: Node): Check {
  const checks: Check[] = [];
  if (node.$ref) checks.push(named(node.$ref));
  if (node.allOf) checks.push(...node.allOf.map(compile));
  const ownType = node.type ? new Set(node.type) : null;
  if (ownType) checks.push(typeCheck(ownType));
  if (node.enum) checks.push(enumCheck(node.enum));
  const numeric = numberCheck(node, ownType);
  if (numeric) checks.push(numeric);
  if (node.minLength !== undefined || node.maxLength !== undefined) checks.push(stringCheck(node));
  if (node.minItems !== undefined || node.maxItems !== undefined || node.items) checks.push(arrayCheck(node));
  if (node.required || node.properties || node.additionalProperties) checks.push(objectCheck(node));
  if (node.anyOf) checks.push(unionCheck(node));
  if (checks.length === 0) return () => undefined;
  if (checks.length === 1) return checks[0] as Check;
  return (value) => {
    for (const check of checks) {
      const failure = check(value);
      if (failure) return failure;
    }
    return undefined;
  };
}

function typeCheck(types: Set<string>): Check {
  const expected = [...types].filter((t) => t !== 'null').map((t) => A[t] ?? t);
  const words = expected.length > 1 ? `one of ${expected.join(' or ')}` : (expected[0] ?? 'null');
  // What is taken without naming the value's type (a Set lookup a value, on every node of every body).
  const string = types.has('string');
  const number = types.has('number');
  const integer = number || types.has('integer');
  const boolean = types.has('boolean');
  const object = types.has('object');
  const array = types.has('array');
  const nil = types.has('null');
  return (value) => {
    switch (typeof value) {
      case 'string':
        if (string) return undefined;
        break;
      case 'number':
        if (number || (integer && Number.isInteger(value))) return undefined;
        break;
      case 'boolean':
        if (boolean) return undefined;
        break;
      case 'object':
        if (value === null ? nil : Array.isArray(value) ? array : object) return undefined;
        break;
    }
    const type = jsonType(value);
    if (accepts(types, type)) return undefined;
    return fail(
      'invalid_type',
      (param) => `Invalid type for '${param}': expected ${words}, but got ${GOT[type] ?? type} instead.`,
    );
  };
}

function enumCheck(values: readonly unknown[]): Check {
  const allowed = new Set(values);
  const shown = values.filter((v) => v !== null);
  return (value) => {
    if (allowed.has(value)) return undefined;
    // A value of another type is a type error; the type check names it when the node has a type.
    return fail(
      'invalid_value',
      () => `Invalid value: '${String(value)}'. Supported values are: ${list(shown)}.`,
    );
  };
}

function numberCheck(node: Node, types: Set<string> | null): Check | undefined {
  const { minimum, maximum, exclusiveMinimum, exclusiveMaximum } = node;
  if (
    minimum === undefined &&
    maximum === undefined &&
    exclusiveMinimum === undefined &&
    exclusiveMaximum === undefined
  )
    return undefined;
  const kind = types && !types.has('number') && types.has('integer') ? 'integer' : 'decimal';
  return (value) => {
    if (typeof value !== 'number') return undefined;
    let bound: string | null = null;
    let below = false;
    if (minimum !== undefined && value < minimum) [bound, below] = [`>= ${minimum}`, true];
    else if (exclusiveMinimum !== undefined && value <= exclusiveMinimum)
      [bound, below] = [`> ${exclusiveMinimum}`, true];
    else if (maximum !== undefined && value > maximum) bound = `<= ${maximum}`;
    else if (exclusiveMaximum !== undefined && value >= exclusiveMaximum) bound = `< ${exclusiveMaximum}`;
    if (bound === null) return undefined;
    const words = below ? 'below minimum value' : 'above maximum value';
    return fail(
      `${kind}_${below ? 'below_min' : 'above_max'}_value`,
      (param) => `Invalid '${param}': ${kind} ${words}. Expected a value ${bound}, but got ${value} instead.`,
    );
  };
}

/**
 * What OpenAI answers for a string or an array whose length is out of its bounds (the same rule and
 * wording for both), or undefined when it is within them.
 */
function lengthFailure(
  noun: 'string' | 'array',
  length: number,
  min: number | undefined,
  max: number | undefined,
): Failure | undefined {
  const a = noun === 'array' ? 'an' : 'a';
  if (min !== undefined && length < min) {
    if (length === 0)
      return fail(
        `empty_${noun}`,
        (param) =>
          `Invalid '${param}': empty ${noun}. Expected ${a} ${noun} with minimum length ${min}, but got an empty ${noun} instead.`,
      );
    return fail(
      `${noun}_below_min_length`,
      (param) =>
        `Invalid '${param}': ${noun} too short. Expected ${a} ${noun} with minimum length ${min}, but got ${a} ${noun} with length ${length} instead.`,
    );
  }
  if (max !== undefined && length > max)
    return fail(
      `${noun}_above_max_length`,
      (param) =>
        `Invalid '${param}': ${noun} too long. Expected ${a} ${noun} with maximum length ${max}, but got ${a} ${noun} with length ${length} instead.`,
    );
  return undefined;
}

function stringCheck(node: Node): Check {
  const { minLength, maxLength } = node;
  return (value) =>
    typeof value === 'string' ? lengthFailure('string', value.length, minLength, maxLength) : undefined;
}

function arrayCheck(node: Node): Check {
  const { minItems, maxItems } = node;
  const items = node.items ? compile(node.items) : null;
  return (value) => {
    if (!Array.isArray(value)) return undefined;
    const outOfBounds = lengthFailure('array', value.length, minItems, maxItems);
    if (outOfBounds) return outOfBounds;
    if (items) {
      for (let i = 0; i < value.length; i++) {
        const failure = items(value[i]);
        if (failure) {
          failure.path.push(i);
          return failure;
        }
      }
    }
    return undefined;
  };
}

function objectCheck(node: Node): Check {
  const required = node.required ?? [];
  const requiredSet = new Set(required);
  // By name, so that a body is walked by its own few keys rather than by every parameter the spec has.
  const properties = new Map<string, { readonly check: Check; readonly required: boolean }>();
  for (const [name, inner] of Object.entries(node.properties ?? {}))
    properties.set(name, { check: compile(inner), required: requiredSet.has(name) });
  const extra = node.additionalProperties ? compile(node.additionalProperties) : null;
  return (value) => {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
    const object = value as Record<string, unknown>;
    for (const name of required) {
      if (object[name] === undefined) {
        const failure = fail(
          'missing_required_parameter',
          (param) => `Missing required parameter: '${param}'.`,
        );
        failure.path.push(name);
        return failure;
      }
    }
    for (const name in object) {
      const inner = object[name];
      if (inner === undefined) continue;
      const property = properties.get(name);
      let failure: Failure | undefined;
      if (property) {
        // null for an optional parameter is left to OpenAI, which takes it for "not given" in most places.
        if (inner === null && !property.required) continue;
        failure = property.check(inner);
      } else if (extra) {
        failure = extra(inner);
      }
      if (failure) {
        failure.path.push(name);
        return failure;
      }
    }
    return undefined;
  };
}

/** How a union tells its branches apart: a property whose value picks the branches to check. */
interface Discriminator {
  readonly property: string;
  readonly branches: Map<unknown, number[]>;
  readonly values: unknown[];
}

function discriminatorOf(node: Node): Discriminator | null {
  const branches = node.anyOf ?? [];
  const candidates = node.discriminator ? [node.discriminator] : ['type', 'role'];
  for (const property of candidates) {
    const map = new Map<unknown, number[]>();
    let objects = 0;
    let complete = true;
    branches.forEach((branch, index) => {
      const types = typesOf(branch);
      if (types && !types.has('object')) return;
      objects += 1;
      const values = discriminatorValues(branch, property);
      if (!values) {
        complete = false;
        return;
      }
      for (const v of values) map.set(v, [...(map.get(v) ?? []), index]);
    });
    if (complete && objects > 1 && map.size > 0)
      return { property, branches: map, values: [...map.keys()].filter((v) => v !== null) };
  }
  return null;
}

function unionCheck(node: Node): Check {
  const branches = (node.anyOf ?? []).map(compile);
  let types: (Set<string> | null)[] | null = null;
  let discriminator: Discriminator | null | undefined;
  return (value) => {
    if (discriminator === undefined) discriminator = discriminatorOf(node);
    const type = jsonType(value);
    // The fast path: an object whose discriminator picks its branch is checked against that one only.
    if (discriminator && type === 'object') {
      const object = value as Record<string, unknown>;
      const tag = object[discriminator.property];
      const picked = discriminator.branches.get(tag);
      if (picked) {
        let first: Failure | undefined;
        for (const index of picked) {
          const failure = (branches[index] as Check)(value);
          if (!failure) return undefined;
          first ??= failure;
        }
        // Another branch without the discriminator (a plain map, say) may still take the value.
        if (branches.some((check, index) => !picked.includes(index) && !check(value))) return undefined;
        return first;
      }
    }
    const failures: Failure[] = [];
    for (const check of branches) {
      const failure = check(value);
      if (!failure) return undefined;
      failures.push(failure);
    }
    if (discriminator && type === 'object') {
      const { property, values } = discriminator;
      const tag = (value as Record<string, unknown>)[property];
      const failure =
        tag === undefined
          ? fail('missing_required_parameter', (param) => `Missing required parameter: '${param}'.`)
          : fail(
              'invalid_value',
              () => `Invalid value: '${String(tag)}'. Supported values are: ${list(values)}.`,
            );
      failure.path.push(property);
      return failure;
    }
    types ??= (node.anyOf ?? []).map((branch) => typesOf(branch));
    const matching = failures.filter((_, index) => accepts(types?.[index] ?? null, type));
    if (matching.length === 0) {
      const all = new Set<string>();
      for (const t of types) for (const one of t ?? []) if (one !== 'null') all.add(one);
      if (all.has('number')) all.delete('integer');
      const words = [...all].map((t) => A[t] ?? t).join(' or ');
      return fail(
        'invalid_type',
        (param) =>
          `Invalid type for '${param}': expected one of ${words}, but got ${GOT[type] ?? type} instead.`,
      );
    }
    // The branch that got furthest into the value says the most.
    return matching.reduce((best, failure) => (failure.path.length > best.path.length ? failure : best));
  };
}

function paramOf(path: readonly (string | number)[]): string {
  let param = '';
  for (let i = path.length - 1; i >= 0; i--) {
    const segment = path[i];
    param += typeof segment === 'number' ? `[${segment}]` : param === '' ? segment : `.${segment}`;
  }
  return param;
}

/** The endpoints whose request bodies are checked. */
export const VALIDATED_ENDPOINTS: readonly string[] = Object.keys(ENDPOINT_SCHEMAS);

/**
 * Checks a request body against its endpoint's request schema and OpenAI's further rules; undefined when
 * OpenAI would take it (or the endpoint is not one the schemas cover). The body is what JSON would carry:
 * undefined values count as absent.
 */
export function checkRequestBody(endpoint: string, body: unknown): BodyProblem | undefined {
  const name = ENDPOINT_SCHEMAS[endpoint];
  if (!name) return undefined;
  const failure = named(name)(body);
  if (!failure) {
    // The rules OpenAI enforces beyond the schema.
    const top = asRecord(body);
    return (
      jsonModeProblem(endpoint, top) ??
      (endpoint === '/v1/embeddings' ? embeddingsProblem(top) : strictFormatProblem(endpoint, top))
    );
  }
  const param = paramOf(failure.path);
  return { code: failure.code, param, message: failure.describe(param) };
}

/** What a `json_schema` format's name may be (the spec: a-z, A-Z, 0-9, underscores and dashes, 64 at most). */
const FORMAT_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

/**
 * OpenAI's rules for a `json_schema` format, which the spec does not state: its name's pattern, and, when
 * `strict` is true, the subset of JSON Schema strict mode takes: an object at the root, and every object
 * with `additionalProperties: false` and every one of its properties in `required` (an optional field is
 * a nullable one). A schema built by the work's `outputSchema` keeps them; one an upload hook writes may
 * not, and OpenAI would refuse every request that carries it.
 */
function strictFormatProblem(endpoint: string, top: Record<string, unknown> | null): BodyProblem | undefined {
  let format: Record<string, unknown> | null = null;
  let at = '';
  let schemaAt = '';
  if (endpoint === '/v1/chat/completions') {
    const responseFormat = asRecord(top?.response_format);
    if (responseFormat?.type !== 'json_schema') return undefined;
    format = asRecord(responseFormat.json_schema);
    at = 'response_format.json_schema';
    schemaAt = 'response_format';
  } else if (endpoint === '/v1/responses') {
    format = asRecord(asRecord(top?.text)?.format);
    if (format?.type !== 'json_schema') return undefined;
    at = 'text.format';
    schemaAt = 'text.format.schema';
  }
  if (!format) return undefined;
  const name = format.name;
  if (typeof name === 'string' && !FORMAT_NAME.test(name)) {
    return {
      code: name.length > 64 ? 'string_above_max_length' : 'invalid_value',
      param: `${at}.name`,
      message:
        name.length > 64
          ? `Invalid '${at}.name': string too long. Expected a string with maximum length 64, but got a string with length ${name.length} instead.`
          : `Invalid '${at}.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.`,
    };
  }
  if (format.strict !== true) return undefined;
  const schema = asRecord(format.schema);
  if (!schema) return undefined; // the spec's check names a missing or mistyped schema
  // The work's own format is one object, sent in every request: walked once.
  let why = STRICT_VERDICTS.get(schema);
  if (why === undefined) {
    why = strictSchemaProblem(schema) ?? null;
    STRICT_VERDICTS.set(schema, why);
  }
  if (why === null) return undefined;
  return {
    code: 'invalid_json_schema',
    param: schemaAt,
    message: `Invalid schema for response_format '${typeof name === 'string' ? name : ''}': ${why}`,
  };
}

/**
 * JSON mode (a format of type `json_object`) needs the word "json" in what the model reads, OpenAI says
 * (else the model may write whitespace until its token limit): it refuses the request otherwise, with no
 * code. Only text is read (not an image's or a file's data); a responses request that goes on from a
 * stored prompt, an earlier response or a conversation may have the word there, and is left to OpenAI.
 */
function jsonModeProblem(endpoint: string, top: Record<string, unknown> | null): BodyProblem | undefined {
  if (endpoint === '/v1/chat/completions' && asRecord(top?.response_format)?.type === 'json_object') {
    if (saysJson(top?.messages)) return undefined;
    return {
      code: null,
      param: 'messages',
      message:
        "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
    };
  }
  if (endpoint === '/v1/responses' && asRecord(asRecord(top?.text)?.format)?.type === 'json_object') {
    const elsewhere = ['prompt', 'previous_response_id', 'conversation'].some((key) => top?.[key] != null);
    if (elsewhere || saysJson(top?.instructions) || saysJson(top?.input)) return undefined;
    return {
      code: null,
      param: 'input',
      message:
        "Response input messages must contain the word 'json' in some form to use 'text.format' of type 'json_object'.",
    };
  }
  return undefined;
}

/** Keys whose strings are data, not text the model reads as words. */
const NOT_TEXT = new Set(['image_url', 'file_data', 'file_id', 'file_url', 'url', 'audio', 'data']);

/** Whether any text in a value (a message's content, its parts) holds the word "json", in any case. */
function saysJson(value: unknown, depth = 0): boolean {
  if (typeof value === 'string') return !value.startsWith('data:') && /json/i.test(value);
  if (depth > 16 || value === null || typeof value !== 'object') return false;
  if (Array.isArray(value)) return value.some((item) => saysJson(item, depth + 1));
  return Object.entries(value).some(([key, item]) => !NOT_TEXT.has(key) && saysJson(item, depth + 1));
}

/**
 * The embeddings rule the spec states in words, not in its schema: an input cannot be an empty string.
 * (Its `additionalProperties: false` is not kept: a parameter newer than this copy of the spec passes, as
 * on every endpoint.)
 */
function embeddingsProblem(top: Record<string, unknown> | null): BodyProblem | undefined {
  const input = top?.input;
  if (input === '' || (Array.isArray(input) && input.some((item) => item === '')))
    return {
      code: null,
      param: 'input',
      message:
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
    };
  return undefined;
}

/** What strictSchemaProblem said of schema objects seen already (null: taken). */
const STRICT_VERDICTS = new WeakMap<object, string | null>();

/** Why strict mode refuses a schema (in OpenAI's words), or undefined when it takes it. */
function strictSchemaProblem(schema: Record<string, unknown>): string | undefined {
  const rootType = schema.type;
  if (rootType !== 'object') {
    const shown =
      rootType === undefined ? (schema.anyOf !== undefined ? 'anyOf' : 'None') : JSON.stringify(rootType);
    return `schema must be a JSON Schema of 'type: "object"', got 'type: ${shown}'.`;
  }
  const seen = new Set<unknown>();
  const visit = (node: unknown, context: readonly string[]): string | undefined => {
    const here = asRecord(node);
    if (!here || seen.has(here)) return undefined;
    seen.add(here);
    const where = () =>
      `In context=(${context.map((c) => `'${c}'`).join(', ')}${context.length === 1 ? ',' : ''})`;
    const types = Array.isArray(here.type) ? here.type : [here.type];
    const properties = asRecord(here.properties);
    if (types.includes('object') || properties) {
      if (here.additionalProperties !== false)
        return `${where()}, 'additionalProperties' is required to be supplied and to be false.`;
      const required = Array.isArray(here.required) ? here.required : null;
      const missing = Object.keys(properties ?? {}).find((key) => !required?.includes(key));
      if (missing !== undefined)
        return `${where()}, 'required' is required to be supplied and to be an array including every key in properties. Missing '${missing}'.`;
      for (const [key, value] of Object.entries(properties ?? {})) {
        const why = visit(value, [...context, 'properties', key]);
        if (why) return why;
      }
    }
    const children: [unknown, string[]][] = [];
    if (Array.isArray(here.items)) {
      for (const [i, item] of here.items.entries()) children.push([item, ['items', String(i)]]);
    } else if (here.items !== undefined) children.push([here.items, ['items']]);
    for (const combinator of ['anyOf', 'allOf', 'oneOf']) {
      const branches = here[combinator];
      if (!Array.isArray(branches)) continue;
      for (const [i, branch] of branches.entries()) children.push([branch, [combinator, String(i)]]);
    }
    for (const definitions of ['$defs', 'definitions'])
      for (const [key, value] of Object.entries(asRecord(here[definitions]) ?? {}))
        children.push([value, [definitions, key]]);
    for (const [child, path] of children) {
      const why = visit(child, [...context, ...path]);
      if (why) return why;
    }
    return undefined;
  };
  return visit(schema, []);
}
