import { readdirSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError, messageOf } from '../functions/core/errors';
import type { Work } from '../functions/core/work';

/** A work and the module it came from. */
export interface LoadedWork {
  readonly work: Work;
  readonly module: string;
}

/** The folder users write works in. */
export const WORKS_DIR = resolve(new URL('../works', import.meta.url).pathname);

/**
 * Loads a work module: its default export must be what `defineWork` returned (which has checked the
 * config). A file that does not load, or exports something else, is a ConfigError naming the file.
 */
export async function loadWork(module: string): Promise<LoadedWork> {
  const path = resolve(module);
  let loaded: { default?: unknown };
  try {
    loaded = (await import(pathToFileURL(path).href)) as { default?: unknown };
  } catch (caught) {
    if (caught instanceof ConfigError)
      throw new ConfigError(`${basename(path)}: ${caught.message}`, caught.problems);
    throw new ConfigError(`Cannot load the work file ${path}: ${messageOf(caught)}`);
  }
  const work = loaded.default as Partial<Work> | undefined;
  if (!work || typeof work !== 'object' || !work.settings || typeof work.upload !== 'function') {
    throw new ConfigError(`The work file ${path} must \`export default defineWork({...})\`.`);
  }
  return { work: work as Work, module: path };
}

/** Every work in a folder (each .ts file that is not a test or a declaration). */
export async function loadWorks(dir = WORKS_DIR): Promise<LoadedWork[]> {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts') && !f.endsWith('.test.ts'))
    .sort();
  const works = await Promise.all(files.map((f) => loadWork(join(dir, f))));
  const names = new Map<string, string>();
  for (const { work, module } of works) {
    const other = names.get(work.settings.name);
    if (other) throw new ConfigError(`Two works are named "${work.settings.name}": ${other} and ${module}.`);
    names.set(work.settings.name, module);
  }
  return works;
}
