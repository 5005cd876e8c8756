import { cli } from './cli';

await cli().parseAsync(process.argv);
