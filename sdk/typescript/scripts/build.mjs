// Builds dist/ from src/ so the package works however it is obtained: `npm pack` or
// `npm publish` (prepack), `npm install` in a clone or of the clone's folder (prepare).
// A fresh clone has no node_modules: the compiler comes from the committed lock file.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit" });
  if (r.status !== 0) {
    console.error(`a3s-box SDK build: ${cmd} ${args.join(" ")} failed (exit ${r.status ?? r.signal})`);
    process.exit(r.status || 1);
  }
}

if (!existsSync(tsc)) {
  // --ignore-scripts: this script is itself the package's prepare step
  run(npm, ["ci", "--ignore-scripts", "--no-audit", "--no-fund"]);
}
run(process.execPath, [tsc, "-p", "tsconfig.json"]);
// tsc emits no .d.ts for a .d.ts source: the generated API types go in as they are,
// or dist/index.d.ts would import a file the package does not have.
copyFileSync(join(root, "src", "schema.d.ts"), join(root, "dist", "schema.d.ts"));
