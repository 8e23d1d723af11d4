// sandpit: the last module node imports (node --import) in a sandbox booted
// ahead of time, a warm one. It says on stdout that node is up, then waits
// on stdin for the program's arguments and environment, and leaves the rest
// of stdin, the request's own, to the program, which node then loads as its
// main entry as in a sandbox started for it. Nothing of it stays: not in
// process.argv, process.env or process.execArgv.
import { readSync, writeSync } from "node:fs";

function read(n) {
  const b = Buffer.alloc(n);
  for (let off = 0; off < n; ) {
    let got;
    try {
      got = readSync(0, b, off, n - off, null);
    } catch (e) {
      if (e.code === "EAGAIN") continue;
      throw e;
    }
    // Stdin closed before the program came: the pool is discarding it.
    if (got === 0) process.exit(125);
    off += got;
  }
  return b;
}

// Made now rather than at the program's first write (they are made once,
// the same either way): it saves the program a few milliseconds.
process.stdout;
process.stderr;
writeSync(1, "\0sandpit-ready\n");
const { argv, env } = JSON.parse(read(read(4).readUInt32BE(0)).toString());
process.argv.push(...argv);
for (const k of Object.keys(process.env)) delete process.env[k];
for (const [k, v] of env) process.env[k] = v;
const self = process.execArgv.findLastIndex((a) => a.startsWith("--import=data:text/javascript;base64,"));
if (self >= 0) process.execArgv.splice(self, 1);
