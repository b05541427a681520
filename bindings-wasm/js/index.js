// Browser / worker entry (ES module). Loads khala_sync_wasm_bg.wasm next to this file on the
// first KhalaSync.open(); call KhalaSync.init(urlOrModule) first to load it from elsewhere.
import init, * as wasm from './web/khala_sync_wasm.js';
import { makeKhalaSync } from './core.js';

let loading;
const api = makeKhalaSync(wasm, () => (loading ??= init()));

export const KhalaSync = {
  open: api.open,
  /** Optional: load the wasm module from a custom URL / Response / Module. */
  init(moduleOrPath) {
    loading ??= init(moduleOrPath === undefined ? undefined : { module_or_path: moduleOrPath });
    return loading;
  },
};
export default KhalaSync;
