/**
 * The start wrapper that keeps the heap bounds of NODE_OPTIONS (infra/step-memory.ts) on AWS.
 *
 * Lambda starts a Node.js function with its own start script, which may pass V8 heap flags on the
 * command line, sized from the function's memory (the nodejs18.x image's passes a tenth of it as new
 * space and the rest as old space). A heap flag on the command line wins over the same flag in
 * NODE_OPTIONS, so the bounds the stack sets would not hold. Lambda hands the runtime's whole command
 * line to the executable named by AWS_LAMBDA_EXEC_WRAPPER: this script removes from it each heap flag that
 * NODE_OPTIONS also sets, and starts the runtime with the rest, unchanged and in order. Where the start
 * script passes no heap flag, it removes nothing.
 *
 * The script reaches Lambda in a layer of its own, as `/opt/openai-batch-heap-flags`. Lambda runs it only
 * if the archive marks it executable, which a zip CDK makes of a directory does only where the file
 * system keeps that mark (not on Windows): so the layer's archive is written here, byte for byte, with the
 * Unix mode in it, whatever machine synthesizes the stack.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Stack, Stage } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type { Construct } from 'constructs';
import { DROPPED_HEAP_FLAGS_ENV } from './step-memory';

/** The wrapper's file name in the layer. */
export const HEAP_WRAPPER_NAME = 'openai-batch-heap-flags';

/** Where Lambda finds it: a layer's files are unpacked under /opt. */
export const HEAP_WRAPPER_PATH = `/opt/${HEAP_WRAPPER_NAME}`;

/**
 * The wrapper (POSIX sh). It is given the interpreter and its arguments; every argument after the
 * interpreter is looked at, since the runtime's script, last, takes none. A flag is recognised in every
 * spelling Node takes (one dash or two, dashes or underscores), its value joined (`--max-old-space-size=922`)
 * or the next argument. What it removes it says in OPENAI_BATCH_DROPPED_HEAP_FLAGS, which the function logs
 * at a cold start.
 */
export const HEAP_WRAPPER_SCRIPT = `#!/bin/sh
# openai-batch: starts the Lambda runtime without the heap flags of its command line that NODE_OPTIONS
# also sets (a flag on the command line would win over NODE_OPTIONS). See infra/heap-wrapper.ts.
set -f
if [ "$#" -eq 0 ]; then
  echo "openai-batch-heap-flags: no command to start (Lambda passes the runtime's)" >&2
  exit 64
fi
# heap SPELLING: sets flag to old or semi where SPELLING is a V8 heap flag in a form Node takes (one dash
# or two, dashes or underscores, a double quote before it as NODE_OPTIONS may have), and joined=1 where
# its value is in it.
heap() {
  flag=
  joined=
  case \${1#\\"} in
    -max[-_]old[-_]space[-_]size | --max[-_]old[-_]space[-_]size) flag=old ;;
    -max[-_]old[-_]space[-_]size=* | --max[-_]old[-_]space[-_]size=*) flag=old joined=1 ;;
    -max[-_]semi[-_]space[-_]size | --max[-_]semi[-_]space[-_]size) flag=semi ;;
    -max[-_]semi[-_]space[-_]size=* | --max[-_]semi[-_]space[-_]size=*) flag=semi joined=1 ;;
  esac
}
old=
semi=
for option in $NODE_OPTIONS; do
  heap "$option"
  case $flag in
    old) old=1 ;;
    semi) semi=1 ;;
  esac
done
dropped=
value=
rest=$(($# - 1))
interpreter=$1
shift
set -- "$@" "$interpreter"
while [ "$rest" -gt 0 ]; do
  argument=$1
  shift
  rest=$((rest - 1))
  if [ -n "$value" ]; then
    value=
    dropped="$dropped $argument"
    continue
  fi
  heap "$argument"
  drop=
  case $flag in
    old) drop=$old ;;
    semi) drop=$semi ;;
  esac
  if [ -n "$drop" ]; then
    dropped="$dropped $argument"
    [ -n "$joined" ] || value=1
  else
    set -- "$@" "$argument"
  fi
done
${DROPPED_HEAP_FLAGS_ENV}=\${dropped# }
export ${DROPPED_HEAP_FLAGS_ENV}
exec "$@"
`;

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = (CRC_TABLE[(crc ^ byte) & 0xff] ?? 0) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/**
 * A zip archive of one file, stored (not compressed), made by "Unix" with the mode `-rwxr-xr-x` and the
 * date 1980-01-01: the same bytes on every machine, so the layer's asset hash changes only with the script.
 */
export function executableZip(name: string, content: Uint8Array): Buffer {
  const fileName = Buffer.from(name, 'utf8');
  const crc = crc32(content);
  const dosDate = (1 << 5) | 1; // 1980-01-01; the time is 00:00
  // The fields the local header (from byte 4) and the central one (from byte 6) share, in the same order:
  // version needed 1.0, flags, method (stored), time, date, CRC-32, both sizes, the name's length.
  const shared = (header: Buffer, at: number) => {
    header.writeUInt16LE(10, at);
    header.writeUInt16LE(dosDate, at + 8);
    header.writeUInt32LE(crc, at + 10);
    header.writeUInt32LE(content.length, at + 14);
    header.writeUInt32LE(content.length, at + 18);
    header.writeUInt16LE(fileName.length, at + 22);
    return header;
  };
  const local = shared(Buffer.alloc(30), 4);
  local.writeUInt32LE(0x04034b50, 0);
  const central = shared(Buffer.alloc(46), 6);
  central.writeUInt32LE(0x02014b50, 0);
  central.writeUInt16LE((3 << 8) | 20, 4); // made by Unix, zip 2.0: the external attributes hold a mode
  // extra field, comment, disk number, internal attributes: 0
  central.writeUInt32LE((0o100755 << 16) >>> 0, 38); // a regular file, rwxr-xr-x
  central.writeUInt32LE(0, 42); // the local header's offset
  const centralOffset = local.length + fileName.length + content.length;
  const centralSize = central.length + fileName.length;
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(1, 8);
  end.writeUInt16LE(1, 10);
  end.writeUInt32LE(centralSize, 12);
  end.writeUInt32LE(centralOffset, 16);
  return Buffer.concat([local, fileName, content, central, fileName, end]);
}

/**
 * Writes the wrapper's archive into `directory` (the cloud assembly's, where CDK stages it from), and
 * returns its path. Not a fixed name in the shared temporary directory: a file planted there by another
 * user would be shipped as the functions' start script.
 */
export function heapWrapperArchive(directory: string): string {
  const path = join(directory, `${HEAP_WRAPPER_NAME}.zip`);
  writeFileSync(path, executableZip(HEAP_WRAPPER_NAME, Buffer.from(HEAP_WRAPPER_SCRIPT, 'utf8')));
  return path;
}

/** The directory of the cloud assembly a stack goes into (the app's `cdk.out`). */
function assemblyDirectory(stack: Stack): string {
  const stage = Stage.of(stack);
  if (!stage) throw new Error(`${stack.node.path}: a stack outside any App or Stage has no cloud assembly`);
  return stage.assetOutdir;
}

const LAYER_ID = 'OpenAIBatchHeapFlagsWrapper';

/** The wrapper's layer: one a stack, shared by every function (of every work) that bounds its heap. */
export function heapWrapperLayer(scope: Construct): lambda.ILayerVersion {
  const stack = Stack.of(scope);
  const existing = stack.node.tryFindChild(LAYER_ID);
  if (existing instanceof lambda.LayerVersion) return existing;
  if (existing)
    throw new Error(
      `${existing.node.path}: the id ${LAYER_ID} is taken in this stack by something other than openai-batch's heap-flags layer`,
    );
  // No compatibleRuntimes: the script starts any Node.js runtime.
  return new lambda.LayerVersion(stack, LAYER_ID, {
    code: lambda.Code.fromAsset(heapWrapperArchive(assemblyDirectory(stack))),
    description: `openai-batch: ${HEAP_WRAPPER_PATH}, which keeps NODE_OPTIONS' heap flags over the start script's`,
    compatibleArchitectures: [lambda.Architecture.ARM_64, lambda.Architecture.X86_64],
  });
}
