// Builds the web console's page (src/console/ui/) into dist/console/ui/: index.html, app.js (Preact,
// the page and the parts of ECharts it draws with, bundled and minified by esbuild) and app.css. The
// console's server (src/console/server.ts) serves that folder; nothing is loaded from elsewhere.
//
//   node scripts/build-console.mjs [--out <dir>]   (from runtime/; the runtime's `npm run build` runs it)
import { copyFile, mkdir, readFile } from "node:fs/promises";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { gzipSync } from "node:zlib";

const runtime = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const source = join(runtime, "src", "console", "ui");
const at = process.argv.indexOf("--out");
const out = at === -1 ? join(runtime, "dist", "console", "ui") : resolve(process.argv[at + 1] ?? "");

/** esbuild, a devDependency: an install without them (NODE_ENV=production) gets the runtime, not the page. */
async function loadEsbuild() {
  try {
    return await import("esbuild");
  } catch {
    return undefined;
  }
}

const esbuild = await loadEsbuild();
if (!esbuild) {
  process.stderr.write(
    "build-console: esbuild is not installed (a devDependency), so the console's page is not built; `npm install` then `npm run build`\n",
  );
  process.exit(0);
}

await mkdir(out, { recursive: true });
const result = await esbuild.build({
  entryPoints: [
    { in: join(source, "main.tsx"), out: "app" },
    { in: join(source, "app.css"), out: "app" },
  ],
  outdir: out,
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["chrome109", "firefox115", "safari15.4"],
  jsx: "automatic",
  jsxImportSource: "preact",
  minify: true,
  // ECharts' development-only checks and messages go.
  define: { "process.env.NODE_ENV": '"production"' },
  legalComments: "eof",
  logLevel: "warning",
  metafile: true,
});
await copyFile(join(source, "index.html"), join(out, "index.html"));

const sizes = await Promise.all(
  Object.keys(result.metafile.outputs).map(async (file) => {
    const bytes = await readFile(resolve(process.cwd(), file));
    return `${relative(out, resolve(process.cwd(), file))} ${kib(bytes.length)} (${kib(gzipSync(bytes).length)} gzipped)`;
  }),
);
process.stderr.write(`build-console: ${relative(process.cwd(), out) || "."}: ${sizes.join(", ")}\n`);

function kib(bytes) {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}
