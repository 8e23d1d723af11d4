// Run with: go run ./examples/go/sandpit-run examples/js/hello.mjs world
const name = process.argv[2] ?? "sandpit";
console.log(`hello, ${name}, from node ${process.version} as uid ${process.getuid()}`);
