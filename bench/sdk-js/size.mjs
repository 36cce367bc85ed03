// The SDK's bundle size: sdk/js/dist (what `npm run build` ships) bundled into one ESM file by
// esbuild, as an application's bundler would take it whole, unminified and minified, each raw,
// gzipped (level 9) and brotli-compressed (quality 11). Also a bundle of `TetherClient` alone
// with `MemoryStore` (what a page that uses neither `LocalStorageStore` nor the helpers pulls
// in: tree shaking can drop only a little, since the client uses most modules).
//
//   node size.mjs          (bench/sdk-js/run.sh size builds the SDK first)

import { readdirSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

import { build, version } from "esbuild";

import { here, repo } from "./lib.mjs";

const dist = join(repo, "sdk/js/dist");
const OUT = process.env.OUT ?? join(here, "../results", `sdk-js-size-${Date.now()}`);
mkdirSync(OUT, { recursive: true });

const gz = (b) => gzipSync(b, { level: 9 }).length;
const br = (b) => brotliCompressSync(b, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length;

async function bundle(contents, minify) {
  const result = await build({
    stdin: { contents, resolveDir: dist, sourcefile: "entry.js", loader: "js" },
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    minify,
    legalComments: "none",
    write: false,
    logLevel: "silent",
  });
  return Buffer.from(result.outputFiles[0].contents);
}

const rows = [];
const files = readdirSync(dist).filter((f) => f.endsWith(".js"));
const concatenated = Buffer.concat(files.map((f) => readFileSync(join(dist, f))));
rows.push({ what: `dist/*.js as built (${files.length} files, concatenated)`, raw: concatenated.length, gzip: gz(concatenated), brotli: br(concatenated) });
for (const [name, entry] of [
  ["everything (export * from index.js)", 'export * from "./index.js";'],
  ["TetherClient + MemoryStore only", 'export { TetherClient, MemoryStore } from "./index.js";'],
]) {
  for (const minify of [false, true]) {
    const b = await bundle(entry, minify);
    writeFileSync(join(OUT, `${minify ? "min" : "plain"}-${rows.length}.js`), b);
    rows.push({ what: `${name}, ${minify ? "minified" : "bundled, not minified"}`, raw: b.length, gzip: gz(b), brotli: br(b) });
  }
}

console.log(`bundle size of sdk/js/dist with esbuild ${version} (ESM, es2022, platform neutral); bytes`);
console.log(`| what | raw | gzip -9 | brotli 11 |\n|---|---|---|---|`);
for (const r of rows) console.log(`| ${r.what} | ${r.raw} | ${r.gzip} | ${r.brotli} |`);
writeFileSync(join(OUT, "size.json"), JSON.stringify({ esbuild: version, rows }, null, 2));
