// `npm pack` from a clean copy of the package (no node_modules, no build step: the package
// ships its sources), and what the tarball holds works once installed: the signature entry
// without Next.js, and the config helper pointing at handler files inside the package.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");
const work = mkdtempSync(path.join(tmpdir(), "cdc-next-pack-"));
after(() => rmSync(work, { recursive: true, force: true }));

test("npm pack from a clean copy holds every entry point, its types, and nothing else", async () => {
  const copy = path.join(work, "copy");
  cpSync(root, copy, {
    recursive: true,
    filter: (src) => !/[/\\](node_modules|\.git)([/\\]|$)|\.tgz$/.test(path.relative(root, src) ? `/${path.relative(root, src)}` : ""),
  });
  assert.ok(!existsSync(path.join(copy, "node_modules")));
  const { stdout } = await run("npm", ["pack", "--json", "--pack-destination", work], { cwd: copy });
  const [packed] = JSON.parse(stdout);
  const files = packed.files.map((f) => f.path).sort();
  const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8"));
  for (const [name, entry] of Object.entries(pkg.exports)) {
    for (const file of typeof entry === "string" ? [entry] : Object.values(entry)) {
      assert.ok(files.includes(file.replace(/^\.\//, "")), `${name}: ${file} is in the tarball`);
    }
  }
  assert.ok(files.includes("README.md"));
  assert.deepEqual(
    files.filter((f) => !f.startsWith("src/") && !["package.json", "README.md"].includes(f)),
    [],
    "only the sources, package.json and README"
  );

  // Installed as a shop would have it.
  const app = path.join(work, "app");
  const dir = path.join(app, "node_modules", "@cdc-worker", "next");
  mkdirSync(dir, { recursive: true });
  await run("tar", ["-xzf", path.join(work, packed.filename), "-C", dir, "--strip-components=1"]);
  const script = `
    import { sign, verifySignature } from "@cdc-worker/next/signature";
    import { createRequire } from "node:module";
    const { withSharedCache } = createRequire(import.meta.url)("@cdc-worker/next/config");
    const ok = verifySignature(sign("k", "{}"), "{}", "k").ok;
    const plain = withSharedCache({ cacheComponents: true });
    process.env.REDIS_URL = "redis://cache:6379";
    const shared = withSharedCache({ cacheComponents: true });
    console.log(JSON.stringify({ ok, plain, shared }));`;
  const out = await run(process.execPath, ["--input-type=module", "-e", script], { cwd: app });
  const { ok, plain, shared } = JSON.parse(out.stdout);
  assert.equal(ok, true);
  assert.deepEqual(plain, { cacheComponents: true }, "without REDIS_URL the config is left alone");
  assert.equal(shared.cacheMaxMemorySize, 0);
  for (const file of [shared.cacheHandler, shared.cacheHandlers.default, shared.cacheHandlers.remote]) {
    assert.ok(file.startsWith(dir) && existsSync(file), `${file} is a file of the installed package`);
  }
});
