// @ts-check
/**
 * `cacheHandlers.default` and `.remote` when REDIS_URL is set: `'use cache'` entries and
 * their tag invalidations live in Redis, shared by every instance, so a revalidateTag()
 * on any instance (cdc-worker needs to reach only one) expires the entry for all.
 *
 * There is no per-instance copy: every read asks Redis for the entry and then, in one
 * MGET, for the records of its tags and the route's soft tags. That is two local round
 * trips (well under a millisecond each) and never serves a stale entry, where a
 * per-instance tag manifest synced in refreshTags() would have to download every
 * revalidated tag (here: one per product) on every request.
 *
 * Timestamps: Next.js stamps a `'use cache'` entry with the start of its render (before
 * the function reads anything), on this process's clock. set() stores that instant on
 * Redis's clock and get() hands it back on this process's clock (shared-cache.js), so an
 * instance whose clock runs ahead cannot make an entry look newer than a revalidation
 * another instance recorded.
 *
 * Redis down or slow: get() is a miss and set() is skipped, so pages render from the
 * database; see shared-cache.js for why tag writes fail loudly instead.
 */
import * as shared from "./shared-cache.js";

// Connect when Next.js loads the handler (at server start), not at the first request.
if (shared.enabled()) void shared.ready();

/**
 * @param {Uint8Array} bytes
 * @returns {ReadableStream<Uint8Array>}
 */
function streamOf(bytes) {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(bytes);
      controller.close();
    },
  });
}

/**
 * Writes still in flight in this process, so a get() right after a set() of the same
 * key waits for it (the handler contract) instead of rendering again.
 * @type {Map<string, Promise<void>>}
 */
const pendingSets = new Map();

/** @type {import("next/cache.js").CacheHandler} */
const handler = {
  async get(cacheKey, softTags) {
    const pending = pendingSets.get(cacheKey);
    if (pending) await pending;
    const client = await shared.ready();
    if (!client) return undefined;
    try {
      const raw = await shared.withTimeout(client.get(shared.entryKey("uc", cacheKey)));
      if (raw == null) return undefined;
      const data = JSON.parse(String(raw));
      const tags = /** @type {string[]} */ (data.tags);
      // Soft tags are checked here (getExpiration answers Infinity), in the same MGET as
      // the entry's own tags.
      const verdict = await shared.tagState(client, [...tags, ...softTags], data.timestamp);
      if (verdict === "expired") return undefined;
      return {
        value: streamOf(Buffer.from(data.value, "base64")),
        tags,
        stale: data.stale,
        timestamp: await shared.toLocalTime(client, data.timestamp),
        expire: data.expire,
        // A negative revalidate serves this once and refreshes in the background.
        revalidate: verdict === "stale" ? -1 : data.revalidate,
      };
    } catch {
      return undefined; // a miss: the page renders from the database
    }
  },

  async set(cacheKey, pendingEntry) {
    /** @type {() => void} */
    let done = () => {};
    const mine = new Promise((resolve) => (done = () => resolve(undefined)));
    pendingSets.set(cacheKey, /** @type {Promise<void>} */ (mine));
    try {
      const entry = await pendingEntry;
      // Consume the stream exactly once, whether or not Redis is there to store it.
      const bytes = Buffer.from(await new Response(entry.value).arrayBuffer());
      const client = await shared.ready();
      if (!client) return;
      const data = JSON.stringify({
        value: bytes.toString("base64"),
        tags: entry.tags,
        stale: entry.stale,
        timestamp: await shared.toRedisTime(client, entry.timestamp),
        expire: entry.expire,
        revalidate: entry.revalidate,
      });
      await shared.withTimeout(
        client.set(shared.entryKey("uc", cacheKey), data, {
          expiration: { type: "EX", value: shared.entryTtl(entry.expire) },
        })
      );
    } catch {
      // Not cached this time; the next request renders again.
    } finally {
      if (pendingSets.get(cacheKey) === mine) pendingSets.delete(cacheKey);
      done();
    }
  },

  // Tag state is read from Redis on every get(), so there is nothing to sync.
  async refreshTags() {},

  // Infinity: "pass the soft tags to get() instead", which checks them with the entry's tags.
  async getExpiration() {
    return Infinity;
  },

  async updateTags(tags, durations) {
    await shared.recordTags(tags, durations);
  },
};

export default handler;
