import { describe, expect, it } from 'vitest';
import type { Handlers } from '../../functions/handlers';
import type { Definition } from '../../local/definition';
import { executeLocally } from '../../local/execute';

describe('executeLocally', () => {
  it('refuses a definition that breaks the States Language on every call, not only the first', async () => {
    // A Pass state that names a next state the definition does not have; no handler is reached.
    const broken = { StartAt: 'A', States: { A: { Type: 'Pass', Next: 'Nowhere' } } } as Definition;
    for (let call = 1; call <= 2; call++)
      await expect(
        executeLocally(broken, {} as Handlers, {}, { executionName: `broken-${call}` }),
      ).rejects.toThrow(/definition is invalid/);
  });

  it('runs a valid definition again once it has been checked', async () => {
    const definition = {
      StartAt: 'A',
      States: { A: { Type: 'Pass', Result: { ok: 1 }, End: true } },
    } as Definition;
    for (let call = 1; call <= 2; call++)
      expect(
        await executeLocally(definition, {} as Handlers, {}, { executionName: `valid-${call}` }),
      ).toEqual({
        ok: 1,
      });
  });
});
