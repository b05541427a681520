// Shortens the module's import and export names and rewrites wasm-bindgen's JS glue to match.
//
//   node scripts/minify-names.mjs <module.wasm> <mapping.json> <glue.js> [<glue.d.ts>]
//
// `mapping.json` is what `wasm-opt --minify-imports-and-exports-and-modules` prints
// (`{"imports": [[module, name, new name]…], "exports": [[name, new name]…]}`); the module
// given here is that pass's output. wasm-bindgen names imports `__wbg_<name>_<16 hex>` and
// closure exports after their full Rust paths (6.5 KB of import and 1.3 KB of export names,
// the hashes incompressible): README "Bundle size", step 15.
//
// The glue refers to imports only as keys of its import object (`<name>: function(…)`) and
// to exports only as `wasm.<name>`. Every old name must be found there exactly as often as
// expected, else the script fails (a wasm-bindgen update that changes the glue's shape then
// breaks the build instead of the package).
import fs from 'node:fs';

const [wasmPath, mapPath, gluePath, dtsPath] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`minify-names: ${msg}`);
  process.exit(1);
};
const map = JSON.parse(fs.readFileSync(mapPath, 'utf8'));
const imports = WebAssembly.Module.imports(new WebAssembly.Module(fs.readFileSync(wasmPath)));
const modules = new Set(imports.map((i) => i.module));
if (modules.size !== 1) fail(`expected one import module, found ${[...modules].join(', ')}`);
const [newModule] = modules;
const oldModules = new Set(map.imports.map(([m]) => m));
if (oldModules.size !== 1) fail(`expected one original import module, found ${oldModules.size}`);
const [oldModule] = oldModules;
const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

let glue = fs.readFileSync(gluePath, 'utf8');
const replaceOnce = (re, to, what) => {
  let n = 0;
  glue = glue.replace(re, () => {
    n += 1;
    return to;
  });
  if (n !== 1) fail(`${what}: found ${n} times in ${gluePath}, expected once`);
};
replaceOnce(
  new RegExp(`"${esc(oldModule)}": import0`, 'g'),
  `${JSON.stringify(newModule)}: import0`,
  `import module ${oldModule}`,
);
for (const [, name, to] of map.imports) {
  replaceOnce(
    new RegExp(`(?<=^\\s*)${esc(name)}(?=: function\\()`, 'gm'),
    JSON.stringify(to),
    `import ${name}`,
  );
}
const renamed = new Map(map.exports);
glue = glue.replace(/\bwasm\.([A-Za-z_$][\w$]*)/g, (whole, name) => {
  const to = renamed.get(name);
  if (to === undefined) fail(`the glue uses wasm.${name}, which is not an export`);
  return `wasm[${JSON.stringify(to)}]`;
});
fs.writeFileSync(gluePath, glue);

if (dtsPath) {
  // Only the `InitOutput` interface names raw exports; keep it truthful.
  let dts = fs.readFileSync(dtsPath, 'utf8');
  for (const [name, to] of map.exports) {
    dts = dts.replace(
      new RegExp(`(?<=readonly )${esc(name)}(?=:)`, 'g'),
      JSON.stringify(to),
    );
  }
  fs.writeFileSync(dtsPath, dts);
}
