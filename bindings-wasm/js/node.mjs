// Node entry (ES module over the wasm-bindgen `nodejs` build, which loads the wasm
// synchronously). Node has no IndexedDB: clients use the in-memory store. Node 20 needs
// `--experimental-websocket` for the global WebSocket (Node 22+ has it by default).
import { createRequire } from 'node:module';
import { makeKhalaSync } from './core.js';

const require = createRequire(import.meta.url);
const wasm = require('./node/khala_sync_wasm.js');
const api = makeKhalaSync(wasm, async () => {});

export const KhalaSync = { open: api.open, init: async () => {} };
export default KhalaSync;
