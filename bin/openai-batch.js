#!/usr/bin/env node
// The package's command: registers tsx so that the TypeScript sources run as they are.
import { register } from 'tsx/esm/api';

register();
await import('../local/main.ts');
