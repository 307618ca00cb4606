#!/usr/bin/env node
// A person's view of freshness: headless Chromium (the system's /usr/bin/chromium, driven
// by playwright-core, which never downloads a browser) opens a store page, the price of
// one product is changed in the database, and the page is reloaded until the new price
// is on screen. Prints one JSON line with the measured window and the screenshot paths;
// exits 1 if the price never shows within TIMEOUT_MS. Run by tests/browser.rs.
//
// Environment:
//   BASE_URL      storefront, e.g. http://127.0.0.1:3000
//   STORE_ID, PRODUCT_ID   the page and the product watched
//   DATABASE_URL  source database; PRICE_ID and NEW_AMOUNT: `UPDATE "Price" SET amount`
//   OUT_DIR       where the screenshots go (created)
//   CHROMIUM      browser binary (default /usr/bin/chromium); TIMEOUT_MS (default 5000)
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { chromium } from "playwright-core";

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`browser-check: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

const base = need("BASE_URL");
const storeId = need("STORE_ID");
const productId = need("PRODUCT_ID");
const priceId = need("PRICE_ID");
const newAmount = Number(need("NEW_AMOUNT"));
const outDir = need("OUT_DIR");
const databaseUrl = need("DATABASE_URL");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeoutMs = Number(process.env.TIMEOUT_MS || 5000);

mkdirSync(outDir, { recursive: true });
// A fresh profile every run: no state from an earlier run, nothing in the user's home.
const userDataDir = mkdtempSync(path.join(tmpdir(), "cdc-browser-"));

// Everything that could reach the network on its own (updates, sync, QUIC, field
// trials) is off: the test must talk only to the local storefront.
const args = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const store = `${base}/stores/${encodeURIComponent(storeId)}`;
const priceSel = `article[data-product-id="${productId}"] [data-field="price"]`;

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args,
  viewport: { width: 1280, height: 900 },
});
const db = new pg.Client({ connectionString: databaseUrl });
let result;
try {
  await db.connect();
  const page = context.pages()[0] ?? (await context.newPage());

  const priceOnScreen = async () => {
    const el = page.locator(priceSel);
    await el.waitFor({ state: "visible", timeout: timeoutMs });
    return { value: await el.getAttribute("data-value"), text: (await el.innerText()).trim() };
  };

  await page.goto(store, { waitUntil: "load" });
  const before = await priceOnScreen();
  const beforeShot = path.join(outDir, "store-before.png");
  await page.screenshot({ path: beforeShot, fullPage: true });
  if (before.value === String(newAmount)) throw new Error(`the price is already ${newAmount}`);

  const res = await db.query('UPDATE "Price" SET amount = $1 WHERE id = $2', [newAmount, priceId]);
  if (res.rowCount !== 1) throw new Error(`no Price row ${priceId}`);
  const t0 = performance.now();

  let after;
  let reloads = 0;
  for (;;) {
    await page.reload({ waitUntil: "domcontentloaded" });
    reloads++;
    after = await priceOnScreen();
    if (after.value === String(newAmount)) break;
    if (performance.now() - t0 > timeoutMs) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const visibleAfterMs = Math.round(performance.now() - t0);
  const afterShot = path.join(outDir, "store-after.png");
  await page.screenshot({ path: afterShot, fullPage: true });

  await page.goto(`${base}/products/${encodeURIComponent(productId)}`, { waitUntil: "load" });
  await page.locator('[data-field="freshness"]').waitFor({ state: "visible", timeout: timeoutMs });
  const freshness = (await page.locator('[data-field="freshness"]').innerText()).trim();
  const productShot = path.join(outDir, "product.png");
  await page.screenshot({ path: productShot, fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(store, { waitUntil: "load" });
  await priceOnScreen();
  const mobileShot = path.join(outDir, "store-mobile.png");
  await page.screenshot({ path: mobileShot });

  result = {
    ok: after.value === String(newAmount),
    before: before.text,
    after: after.text,
    visible_after_ms: visibleAfterMs,
    reloads,
    freshness,
    screenshots: [beforeShot, afterShot, productShot, mobileShot],
  };
} finally {
  await db.end().catch(() => {});
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
