// The Redis cache handlers against a real redis-server: entries round-trip, a tag
// revalidated after an entry's render started expires it (on every instance), a render
// that read the data before a revalidation and stored after it is not served, and an
// instance whose clock is off (another process with a skewed clock) changes none of that.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { connected, startRedis } from "./fixtures/redis.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const run = promisify(execFile);

const redis = await startRedis();
process.env.REDIS_URL = redis.url;
process.env.REDIS_CACHE_PREFIX = "t:";
// Imported after REDIS_URL is set: the handlers read their settings when they load.
const { default: useCache } = await import("../src/use-cache-handler.js");
const { default: IsrCacheHandler } = await import("../src/cache-handler.js");
const shared = await import("../src/shared-cache.js");
await connected(shared);

after(async () => {
  await shared.close();
  redis.stop();
});

/** The clock Next.js stamps a `'use cache'` entry's render start with. */
const nextNow = () => performance.timeOrigin + performance.now();

/** A `'use cache'` entry as Next.js hands it to set(): render started at `timestamp`. */
function entry(tags, timestamp = nextNow(), body = "cached") {
  return { value: new Blob([body]).stream(), tags, stale: 300, timestamp, expire: 3600, revalidate: 900 };
}

async function text(stream) {
  return new Response(stream).text();
}

/**
 * Between two events a test orders: longer than the rounding toward older of a clock
 * conversion (the round trips to Redis), which on a loaded machine took more than 50 ms.
 */
const pause = () => new Promise((r) => setTimeout(r, 250));

let n = 0;
const unique = (what) => `${what}-${++n}-${process.pid}`;

/** Runs fixtures/instance.mjs in another process whose clock is `skewMs` off this one's. */
async function otherInstance(skewMs, ...args) {
  const { stdout } = await run(
    process.execPath,
    ["--require", path.join(here, "fixtures/skewed-clock.cjs"), path.join(here, "fixtures/instance.mjs"), ...args],
    { env: { ...process.env, CLOCK_SKEW_MS: String(skewMs) } }
  );
  return JSON.parse(stdout.trim().split("\n").pop());
}

describe("'use cache' handler", () => {
  test("an entry comes back with its value, tags and render start", async () => {
    const key = unique("k");
    const tag = unique("t");
    const start = nextNow();
    await useCache.set(key, Promise.resolve(entry([tag], start, "hello")));
    const got = await useCache.get(key, []);
    assert.ok(got, "a hit");
    assert.equal(await text(got.value), "hello");
    assert.deepEqual(got.tags, [tag]);
    // Back on this process's clock, never later than the real start (it may round down
    // by the round trips of the clock measurements, which a loaded machine stretches).
    assert.ok(got.timestamp <= start && got.timestamp > start - 1000, `${got.timestamp} vs ${start}`);
    assert.equal(got.revalidate, 900);
  });

  test("a tag revalidated after the render started expires the entry; one revalidated before does not", async () => {
    const [k1, k2, tag] = [unique("k"), unique("k"), unique("t")];
    const renderedBefore = nextNow();
    await pause();
    await shared.recordTags([tag], { expire: 0 });
    await pause();
    await useCache.set(k1, Promise.resolve(entry([tag], renderedBefore)));
    await useCache.set(k2, Promise.resolve(entry([tag])));
    assert.equal(await useCache.get(k1, []), undefined, "rendered before the revalidation: expired");
    assert.ok(await useCache.get(k2, []), "rendered after it: fresh");
  });

  test("soft tags (the route's implicit tags) expire entries too", async () => {
    const [key, soft] = [unique("k"), unique("_N_T_/page")];
    await useCache.set(key, Promise.resolve(entry([unique("t")])));
    assert.ok(await useCache.get(key, [soft]));
    await shared.recordTags([soft]);
    assert.equal(await useCache.get(key, [soft]), undefined);
  });

  test("a revalidation with a later expire makes the entry stale, not gone", async () => {
    const [key, tag] = [unique("k"), unique("t")];
    await useCache.set(key, Promise.resolve(entry([tag])));
    await shared.recordTags([tag], { expire: 300 });
    const got = await useCache.get(key, []);
    assert.ok(got, "still served");
    assert.equal(got.revalidate, -1, "once, while it is refreshed in the background");
  });
});

describe("ISR handler", () => {
  test("pages keep their Buffers and Maps", async () => {
    const isr = new IsrCacheHandler({});
    const key = unique("/page");
    const page = {
      kind: "APP_PAGE",
      html: "<p>x</p>",
      rscData: Buffer.from([1, 2, 3]),
      segmentData: new Map([["/a", Buffer.from("seg")]]),
      headers: { "x-next-cache-tags": unique("t") },
      status: 200,
    };
    assert.equal(await isr.get(key, {}), null);
    await isr.set(key, page, { cacheControl: { revalidate: false } });
    const got = await isr.get(key, {});
    assert.ok(got);
    assert.deepEqual(got.value.rscData, page.rscData);
    assert.deepEqual(got.value.segmentData, page.segmentData);
  });

  test("a render that read the data before a revalidation and stored after it is not served", async () => {
    const isr = new IsrCacheHandler({});
    const [key, tag] = [unique("/product"), unique("t")];
    // Next.js asks the cache, misses, renders (reading the old data)...
    assert.equal(await isr.get(key, {}), null);
    await pause();
    // ...the data changes and the tag is revalidated while the render runs...
    await shared.recordTags([tag], { expire: 0 });
    await pause();
    // ...and the render's result, with the old data, is stored afterwards.
    await isr.set(key, { kind: "APP_PAGE", html: "old", headers: { "x-next-cache-tags": tag }, status: 200 }, {
      cacheControl: { revalidate: false },
    });
    assert.equal(await isr.get(key, {}), null, "the entry must count from the start of its render");
    // The next render starts after the revalidation: that one is served.
    await isr.set(key, { kind: "APP_PAGE", html: "new", headers: { "x-next-cache-tags": tag }, status: 200 }, {
      cacheControl: { revalidate: false },
    });
    assert.equal((await isr.get(key, {}))?.value.html, "new");
  });

  test("fetch entries are checked against the fetch's tags", async () => {
    const isr = new IsrCacheHandler({});
    const [key, tag] = [unique("fetch"), unique("t")];
    const ctx = { kind: "FETCH", tags: [tag], softTags: [] };
    assert.equal(await isr.get(key, ctx), null);
    await isr.set(key, { kind: "FETCH", data: { body: "x", headers: {}, status: 200 }, revalidate: 60 }, { ...ctx, fetchCache: true });
    assert.ok(await isr.get(key, ctx));
    await shared.recordTags([tag], { expire: 0 });
    assert.equal(await isr.get(key, ctx), null);
  });
});

describe("one clock for every instance", () => {
  test("an instance whose clock runs 30 s ahead cannot make an entry it rendered outlive a revalidation", async () => {
    const [key, tag] = [unique("k"), unique("t")];
    await otherInstance(30_000, "set-uc", key, tag);
    await pause();
    await shared.recordTags([tag], { expire: 0 }); // this instance, on time
    assert.equal(await useCache.get(key, []), undefined, "rendered before the revalidation: expired");
  });

  test("a revalidation recorded by an instance whose clock runs 30 s behind expires what was rendered before it", async () => {
    const [key, tag] = [unique("k"), unique("t")];
    await useCache.set(key, Promise.resolve(entry([tag])));
    await pause();
    await otherInstance(-30_000, "record", tag);
    assert.equal(await useCache.get(key, []), undefined);
  });

  test("a revalidation recorded by an instance whose clock runs 30 s ahead expires what was rendered before it at once", async () => {
    const [key, tag] = [unique("k"), unique("t")];
    await useCache.set(key, Promise.resolve(entry([tag])));
    await pause();
    await otherInstance(30_000, "record", tag);
    assert.equal(await useCache.get(key, []), undefined, "not only once this clock reaches the other's");
  });

  test("an ISR page rendered on an instance 30 s ahead is expired by a revalidation here", async () => {
    const [key, tag] = [unique("/page"), unique("t")];
    await otherInstance(30_000, "set-isr", key, tag);
    const isr = new IsrCacheHandler({});
    assert.ok(await isr.get(key, {}), "stored");
    await shared.recordTags([tag], { expire: 0 });
    assert.equal(await isr.get(key, {}), null);
  });

  test("entries rendered after a revalidation stay fresh, whatever the clocks", async () => {
    const [k1, k2, tag] = [unique("k"), unique("k"), unique("t")];
    await otherInstance(30_000, "record", tag);
    await pause();
    await useCache.set(k1, Promise.resolve(entry([tag])));
    assert.ok(await useCache.get(k1, []), "rendered here after an instance ahead revalidated");
    await otherInstance(-30_000, "set-uc", k2, tag);
    assert.deepEqual(await otherInstance(0, "get-uc", k2), { hit: true }, "rendered by an instance behind, after the revalidation");
  });
});

describe("Redis down", () => {
  test("reads miss, writes are dropped, and recording a tag fails loudly", async () => {
    const [key, tag] = [unique("k"), unique("t")];
    await useCache.set(key, Promise.resolve(entry([tag])));
    assert.ok(await useCache.get(key, []));
    redis.stop();
    // The client notices the closed connection asynchronously.
    const deadline = Date.now() + 5000;
    while ((await shared.ready()) !== null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const t = performance.now();
    assert.equal(await useCache.get(key, []), undefined);
    await useCache.set(unique("k"), Promise.resolve(entry([tag])));
    assert.equal(await new IsrCacheHandler({}).get(unique("/p"), {}), null);
    assert.ok(performance.now() - t < 400, "without waiting for Redis");
    await assert.rejects(shared.recordTags([tag], { expire: 0 }), /unreachable/);
  });
});
