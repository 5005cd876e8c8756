import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { expect } from 'vitest';

/** Fields the real API sends as null but the published spec does not declare nullable (see FACTS.md). */
const NULLABLE_IN_PRACTICE: Record<string, string[]> = {
  Batch: [
    'model',
    'errors',
    'output_file_id',
    'error_file_id',
    'in_progress_at',
    'finalizing_at',
    'completed_at',
    'failed_at',
    'expired_at',
    'cancelling_at',
    'cancelled_at',
  ],
  OpenAIFile: ['status_details', 'expires_at'],
  ListBatchesResponse: ['first_id', 'last_id'],
  ListFilesResponse: ['first_id', 'last_id'],
};

/**
 * A validator for OpenAI's published schemas (test/fixtures/openapi/schemas.json), strict except for the
 * fields the spec forgets are nullable. Fails the test with ajv's findings.
 */
export function openapiValidator(): (schema: string, value: unknown) => void {
  const file = JSON.parse(readFileSync(new URL('../fixtures/openapi/schemas.json', import.meta.url), 'utf8'));
  const schemas: Record<string, { properties?: Record<string, unknown> }> = file.components.schemas;
  for (const [name, fields] of Object.entries(NULLABLE_IN_PRACTICE)) {
    const properties = schemas[name]?.properties ?? {};
    for (const field of fields) {
      if (!properties[field]) throw new Error(`${name}.${field} is not in the spec any more`);
      properties[field] = { anyOf: [properties[field], { type: 'null' }] };
    }
  }
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addFormat('unixtime', {
    type: 'number',
    validate: (n: number) => Number.isInteger(n) && n > 1_000_000_000,
  });
  ajv.addSchema({ $id: 'openai', components: { schemas } });
  return (schema, value) => {
    const check = ajv.getSchema(`openai#/components/schemas/${schema}`);
    if (!check) throw new Error(`no schema ${schema}`);
    const ok = check(value);
    expect(ok ? [] : check.errors, `${schema} does not match OpenAI's spec`).toEqual([]);
  };
}
