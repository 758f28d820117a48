import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { defineConfig, type Plugin } from "vite";

// Writes NAME.gz beside each built text file: ferry serves it to browsers that accept gzip.
function gzipBeside(): Plugin {
  let outDir = "dist";
  return {
    name: "ferry-gzip-beside",
    apply: "build",
    configResolved(config) {
      outDir = config.build.outDir;
    },
    closeBundle() {
      const walk = (dir: string): string[] =>
        readdirSync(dir).flatMap((name) => {
          const path = join(dir, name);
          return statSync(path).isDirectory() ? walk(path) : [path];
        });
      for (const file of walk(outDir)) {
        if (!/\.(html|js|css|svg|json)$/.test(file)) continue;
        const raw = readFileSync(file);
        const zipped = gzipSync(raw, { level: 9 });
        if (zipped.length < raw.length) writeFileSync(`${file}.gz`, zipped);
      }
    },
  };
}

export default defineConfig({
  base: "/ui/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    reportCompressedSize: false,
  },
  plugins: [gzipBeside()],
});
