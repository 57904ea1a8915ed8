// Runs a wasm32-wasip1 program in Node's V8 (the engine Envoy embeds), for
// `make profile-hot-path`: node --no-warnings bench/wasi-run.mjs PROGRAM.wasm
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';

const wasi = new WASI({ version: 'preview1', args: process.argv.slice(2) });
const module = await WebAssembly.compile(await readFile(process.argv[2]));
wasi.start(await WebAssembly.instantiate(module, wasi.getImportObject()));
