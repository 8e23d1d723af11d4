#!/usr/bin/env node
// Runs a Node.js file in a sandpit sandbox, like `node file.js` would: the
// program's stdout and stderr are copied through as they arrive, network
// attempts are reported on stderr, and the exit code is the program's.
//
//   node examples/node/sandpit-run.mjs [--addr 127.0.0.1:50051] file.js [args...]
import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ExecutorService, NetworkEventKind, Termination } from "@sandpit/gen/sandpit/executor/v1/executor_pb.js";

let args = process.argv.slice(2);
let addr = "127.0.0.1:50051";
if (args[0] === "--addr") {
  addr = args[1];
  args = args.slice(2);
}
if (args.length < 1) {
  console.error("usage: sandpit-run.mjs [--addr host:port] file.js [args...]");
  process.exit(2);
}
const [file, ...programArgs] = args;

// The executor speaks gRPC over HTTP/2 without TLS on its own port.
const client = createClient(ExecutorService, createGrpcTransport({ baseUrl: `http://${addr}` }));
try {
  const code = await readFile(file, "utf8");
  for await (const res of client.execute({ code, entrypoint: basename(file), args: programArgs })) {
    const ev = res.event;
    switch (ev.case) {
      case "stdout":
        process.stdout.write(ev.value.data);
        break;
      case "stderr":
        process.stderr.write(ev.value.data);
        break;
      case "network":
        console.error(`[sandpit] ${NetworkEventKind[ev.value.kind]} ${ev.value.method} ${ev.value.url}: ${ev.value.statusCode || ev.value.reason} (rule ${ev.value.ruleId})`);
        break;
      case "result":
        console.error(`[sandpit] ${Termination[ev.value.termination]} exit ${ev.value.exitCode}`);
        process.exitCode = ev.value.exitCode;
        break;
    }
  }
} catch (err) {
  console.error(`sandpit-run: ${err.message}`);
  process.exitCode = 125;
}
