// The declarations shops compile against: tsc accepts them as a shop uses them
// (test/types-usage.ts) and the JavaScript against its own JSDoc (tsconfig.json), and every
// entry point exports at run time exactly the names its .d.ts declares.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import ts from "typescript";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8"));

test("tsc accepts the declarations as a shop uses them, and the sources", async () => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const { stdout } = await promisify(execFile)(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: root }).catch(
    (e) => assert.fail(`tsc failed:\n${e.stdout}${e.stderr}`)
  );
  assert.equal(stdout.trim(), "");
});

test("every entry point exports at run time exactly what its declarations say", async () => {
  const entries = Object.entries(pkg.exports).filter(([k]) => k !== "./package.json");
  const program = ts.createProgram(
    entries.map(([, e]) => path.join(root, e.types)),
    { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, skipLibCheck: true, types: ["node"] }
  );
  const checker = program.getTypeChecker();
  for (const [name, entry] of entries) {
    const file = program.getSourceFile(path.join(root, entry.types));
    assert.ok(file, entry.types);
    const declared = checker
      .getExportsOfModule(checker.getSymbolAtLocation(file))
      .filter((sym) => {
        const target = sym.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(sym) : sym;
        return target.flags & ts.SymbolFlags.Value;
      })
      .map((sym) => sym.name)
      .sort();
    const mod = await import(path.join(root, entry.default));
    const actual = Object.keys(mod)
      .filter((k) => !(entry.default.endsWith(".cjs") && k === "default"))
      .sort();
    assert.deepEqual(actual, declared, `${name}: run-time exports vs ${entry.types}`);
  }
});
