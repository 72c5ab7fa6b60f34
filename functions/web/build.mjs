// Builds the web app into dist/: type-checks the TypeScript (tsc --noEmit), bundles it with
// esbuild (one minified script, one stylesheet), and copies the page and its icon.
//
//   node build.mjs          build into dist/ (commit the result: the functions host embeds it)
//   node build.mjs --check  build into a temporary folder and fail if dist/ differs (stale)
//
// dist/ is committed so that `cargo build` and a user's machine never need npm.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, copyFileSync, mkdirSync, readdirSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const check = process.argv.includes("--check");
const out = check ? mkdtempSync(join(tmpdir(), "aic-web-")) : join(here, "dist");

try {
  execFileSync(process.execPath, [join(here, "node_modules/typescript/bin/tsc"), "-p", join(here, "tsconfig.json")], { stdio: "inherit" });
} catch {
  console.error("functions/web: the TypeScript does not type-check (above)");
  process.exit(1);
}
mkdirSync(out, { recursive: true });
const common = { bundle: true, minify: true, legalComments: "none", logLevel: "warning", charset: "utf8" };
await esbuild.build({ ...common, entryPoints: [join(here, "src/main.ts")], outfile: join(out, "app.js"), format: "iife", target: ["es2020"] });
await esbuild.build({ ...common, entryPoints: [join(here, "src/app.css")], outfile: join(out, "app.css") });
copyFileSync(join(here, "src/index.html"), join(out, "index.html"));
copyFileSync(join(here, "src/icon.svg"), join(out, "icon.svg"));

const files = ["index.html", "app.js", "app.css", "icon.svg"];
const sizes = files.map((f) => {
  const b = readFileSync(join(out, f));
  return `${f} ${b.length} B (gzip ${gzipSync(b, { level: 9 }).length} B)`;
});
if (check) {
  const stale = files.filter((f) => {
    const committed = join(here, "dist", f);
    return !existsSync(committed) || !readFileSync(committed).equals(readFileSync(join(out, f)));
  });
  const extra = readdirSync(join(here, "dist")).filter((f) => !files.includes(f));
  rmSync(out, { recursive: true, force: true });
  if (stale.length || extra.length) {
    console.error(`functions/web/dist is stale (${[...stale, ...extra].join(", ")}): run \`node functions/web/build.mjs\` and commit dist/`);
    process.exit(1);
  }
  console.log("functions/web/dist is up to date: " + sizes.join(", "));
} else {
  console.log("built functions/web/dist: " + sizes.join(", "));
}
