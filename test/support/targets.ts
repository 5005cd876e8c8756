import type { Emulator } from '../../local/emulator/server';
import type { LocalEnvironment } from '../../local/runner';

/** The same stand-ins, with OpenAI at another emulator (one with its own pace, limits or faults). */
export function withEmulator(env: LocalEnvironment, emulator: Emulator): LocalEnvironment {
  return { ...env, emulator, openai: { baseURL: emulator.url, apiKey: 'sk-local' } };
}
