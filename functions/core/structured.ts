import { zodResponseFormat, zodTextFormat } from 'openai/helpers/zod';
import type { z } from 'zod';
import { messageOf } from './errors';
import { describeIssues } from './issues';
import { type BatchErrorItem, type BatchOutputItem, type Endpoint, errorItem } from './items';
import { asRecord } from './values';

// `openai/helpers/zod` is a pure schema converter (no client, no network): the one OpenAI import the core
// allows itself, so that the JSON Schema sent is exactly what OpenAI's own SDK would send.

/** The endpoints whose answers can be structured outputs. */
export const STRUCTURED_ENDPOINTS: readonly Endpoint[] = ['/v1/chat/completions', '/v1/responses'];

/** The name the JSON Schema format is sent under (OpenAI asks for one; it only labels the format). */
export const OUTPUT_FORMAT_NAME = 'output';

/** Why a structured answer was not accepted: each is an error code at stage `openai`. */
export const OUTPUT_FAILURES = ['invalid_output', 'refusal', 'output_truncated'] as const;

/** One of {@link OUTPUT_FAILURES}. */
export type OutputFailure = (typeof OUTPUT_FAILURES)[number];

/** A work's answer schema with the request format built from it once, at `defineWork`. */
export interface StructuredOutput {
  readonly schema: z.ZodType;
  readonly endpoint: Endpoint;
  /**
   * What the requests carry, as plain JSON: chat's `response_format`, or the responses API's
   * `text.format`.
   */
  readonly format: Record<string, unknown>;
}

/** A successful result whose answer was parsed and checked against the work's `outputSchema`. */
export type StructuredOutputItem<O> = BatchOutputItem & {
  /** The answer, parsed from `content` and checked against the work's `outputSchema`. */
  readonly parsed: O;
};

/**
 * Builds the request format for a schema with the official helpers, or says why it cannot: an endpoint
 * without structured outputs, a schema that is not a zod object, or one that OpenAI's strict mode cannot
 * express (an optional field that is not also nullable, a record, a transform, a date...).
 */
export function structuredOutputOf(
  schema: unknown,
  endpoint: Endpoint,
): { readonly output: StructuredOutput } | { readonly problem: string } {
  if (!STRUCTURED_ENDPOINTS.includes(endpoint)) {
    return {
      problem: `outputSchema: structured outputs exist only for ${STRUCTURED_ENDPOINTS.join(' and ')}, not for endpoint ${endpoint}`,
    };
  }
  if (schema === null || typeof schema !== 'object' || !('safeParse' in schema)) {
    return { problem: 'outputSchema: must be a zod schema, such as z.object({...})' };
  }
  const zodSchema = schema as z.ZodType;
  let built: unknown;
  try {
    built =
      endpoint === '/v1/responses'
        ? zodTextFormat(zodSchema as never, OUTPUT_FORMAT_NAME)
        : zodResponseFormat(zodSchema as never, OUTPUT_FORMAT_NAME);
  } catch (caught) {
    return {
      problem: `outputSchema: OpenAI's strict structured outputs cannot express this schema: ${messageOf(caught)}`,
    };
  }
  // The helpers attach a parser that JSON drops; the request needs only the plain format.
  const format = JSON.parse(JSON.stringify(built)) as Record<string, unknown>;
  return { output: { schema: zodSchema, endpoint, format } };
}

/**
 * A request body that asks for the structured output, unless it already asks for a format of its own
 * (`response_format` for chat, `text.format` for responses): the upload hook's choice wins.
 */
export function withOutputFormat(
  body: Record<string, unknown>,
  output: StructuredOutput,
): Record<string, unknown> {
  if (output.endpoint === '/v1/responses') {
    const text = asRecord(body.text);
    if (text?.format !== undefined) return body;
    return { ...body, text: { ...(text ?? {}), format: output.format } };
  }
  if (body.response_format !== undefined) return body;
  return { ...body, response_format: output.format };
}

/**
 * Checks a successful result against the work's answer schema: the output item with `parsed`, or an error
 * (stage `openai`) with the code, the reason and the raw content: `refusal` when the model refused,
 * `output_truncated` when the answer was cut off (chat's `finish_reason: length`, an incomplete response),
 * `invalid_output` when the answer is not JSON or does not match the schema.
 */
export function checkOutput<O>(
  output: StructuredOutput,
  item: BatchOutputItem,
  line: number | null,
): { readonly item: StructuredOutputItem<O> } | { readonly error: BatchErrorItem } {
  const where = `${line === null ? '' : `line ${line}: `}request "${item.id}"`;
  const fail = (code: OutputFailure, reason: string, content: string | null) => ({
    error: {
      ...errorItem({
        stage: 'openai',
        id: item.id,
        code,
        message: `${where}: ${reason}`,
        line,
        statusCode: item.statusCode,
        requestId: item.requestId,
        batchId: item.batchId,
        response: item.response,
      }),
      content,
    },
  });
  const answer = answerOf(item.response);
  if (answer.refusal !== null)
    return fail('refusal', `the model refused to answer: ${answer.refusal}`, answer.refusal);
  if (answer.truncatedBy !== null) {
    return fail(
      'output_truncated',
      `the answer was cut off (${answer.truncatedBy}) before it was complete; raise the output token limit`,
      item.content,
    );
  }
  if (item.content === null) return fail('invalid_output', 'the answer has no text to parse', null);
  let value: unknown;
  try {
    value = JSON.parse(item.content);
  } catch (caught) {
    return fail('invalid_output', `the answer is not JSON: ${messageOf(caught)}`, item.content);
  }
  const parsed = output.schema.safeParse(value);
  if (!parsed.success) {
    const problems = describeIssues(parsed.error, value, false).join('; ');
    return fail(
      'invalid_output',
      `the answer does not match the work's outputSchema: ${problems}`,
      item.content,
    );
  }
  return { item: { ...item, parsed: parsed.data as O } };
}

/** True for the codes of answers that came back but could not be used, which `maxOutputRetries` resends. */
export function isOutputFailure(code: string): code is OutputFailure {
  return (OUTPUT_FAILURES as readonly string[]).includes(code);
}

/** The refusal and the truncation of a chat completion or a response, where either happened. */
function answerOf(body: Record<string, unknown>): {
  readonly refusal: string | null;
  readonly truncatedBy: string | null;
} {
  if (Array.isArray(body.choices)) {
    const choice = asRecord(body.choices[0]);
    const refusal = asRecord(choice?.message)?.refusal;
    return {
      refusal: typeof refusal === 'string' && refusal.length > 0 ? refusal : null,
      truncatedBy: choice?.finish_reason === 'length' ? 'finish_reason: length' : null,
    };
  }
  let refusal: string | null = null;
  if (Array.isArray(body.output)) {
    for (const entry of body.output) {
      const content = asRecord(entry)?.content;
      if (!Array.isArray(content)) continue;
      for (const part of content) {
        const record = asRecord(part);
        if (record?.type === 'refusal' && typeof record.refusal === 'string') refusal ??= record.refusal;
      }
    }
  }
  const reason = asRecord(body.incomplete_details)?.reason;
  return {
    refusal,
    truncatedBy:
      body.status === 'incomplete'
        ? `status: incomplete, reason: ${typeof reason === 'string' ? reason : 'not given'}`
        : null,
  };
}

/**
 * The text a request's `json_schema` format adds to what the model reads, for counting its prompt tokens;
 * null when the request asks for no schema. OpenAI does not publish how it shows the schema to the model,
 * only that it is billed as prompt tokens: this renders it as a titled block of compact JSON (its name,
 * description and schema), a rough count that grows with the schema as OpenAI's does.
 */
export function formatPromptOf(endpoint: string, body: Record<string, unknown>): string | null {
  const format =
    endpoint === '/v1/responses'
      ? asRecord(asRecord(body.text)?.format)
      : endpoint === '/v1/chat/completions'
        ? asRecord(asRecord(body.response_format)?.json_schema)
        : null;
  if (endpoint === '/v1/responses' && format?.type !== 'json_schema') return null;
  const schema = asRecord(format?.schema);
  if (!format || !schema) return null;
  const { $schema: _, ...shown } = schema;
  const name = typeof format.name === 'string' ? format.name : OUTPUT_FORMAT_NAME;
  const description = typeof format.description === 'string' ? `${format.description}\n\n` : '';
  return `# Response Formats\n\n## ${name}\n\n${description}${JSON.stringify(shown)}`;
}
