#!/usr/bin/env node
// The package's command: checks Node.js first, then registers tsx so that the TypeScript sources run as
// they are. Everything else is imported after the check: on an older Node it would die on its own with
// "Promise.withResolvers is not a function" and a stack trace.
const NEEDED = [22, 12]; // package.json engines: >=22.12.0
const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
if (major < NEEDED[0] || (major === NEEDED[0] && minor < NEEDED[1])) {
  process.stderr.write(
    `openai-batch needs Node.js ${NEEDED.join('.')} or later; this is ${process.versions.node}.\n` +
      'Install a current Node.js (https://nodejs.org/, or `nvm install 22`) and run the command again.\n',
  );
  process.exit(2);
}
const { register } = await import('tsx/esm/api');
register();
await import('../local/main.ts');
