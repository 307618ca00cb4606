// @ts-check
/**
 * The Redis side of the shared cache (on when REDIS_URL is set): one client per server
 * process, the tag-invalidation records every instance reads, and the entry encoding.
 *
 * Used by both cache handlers (cache/use-cache-handler.js for `'use cache'`,
 * cache/isr-cache-handler.js for the route/ISR cache) and by lib/revalidate.ts, which
 * records the worker's tags before /api/revalidate answers 200. Next.js loads the
 * handlers outside the app bundle while the route handler is bundled, so this module may
 * be evaluated more than once in one process: its state lives on globalThis, so there is
 * still one client and one connection per process.
 *
 * Keys (PREFIX defaults to "cdc-storefront:"):
 *   PREFIX tag:<tag>              "<stale ms>:<expired ms>" of the tag's last revalidation
 *   PREFIX uc:<build>:<key>       a `'use cache'` entry (JSON, value base64)
 *   PREFIX isr:<build>:<key>      a route/ISR cache entry (JSON)
 *
 * Every entry gets a TTL of at most MAX_TTL; every tag record lives MAX_TTL + 1 day. So
 * a tag record always outlives every entry created before it: an entry can never be
 * served again because the record that invalidated it has expired. (With a
 * `maxmemory-policy`, use `volatile-ttl` or `noeviction`; an LRU policy could evict a
 * tag record before the entries it invalidates.)
 *
 * Failure policy: a read that fails or takes longer than REDIS_CACHE_TIMEOUT_MS is a
 * cache miss (the page renders from the database); a failed entry write is dropped; a
 * failed tag write is an error that /api/revalidate turns into a 503, so cdc-worker
 * keeps the tag and retries it instead of an instance acknowledging an invalidation no
 * other instance will ever see.
 */
const fs = require("node:fs");
const path = require("node:path");
const { createClient } = require("redis");

const STATE = Symbol.for("cdc-storefront.shared-cache");

const DAY_S = 24 * 60 * 60;

/** Longest life of a cached entry, seconds: the longest `expire` the app uses ("days": 7 days). */
const MAX_TTL_S = positiveInt(process.env.REDIS_CACHE_MAX_TTL_SECONDS, 7 * DAY_S);
/** Tag records outlive every entry created before them (see above). */
const TAG_TTL_S = MAX_TTL_S + DAY_S;
/** A Redis call slower than this is treated as a failure (a miss for reads). */
const TIMEOUT_MS = positiveInt(process.env.REDIS_CACHE_TIMEOUT_MS, 500);
const PREFIX = process.env.REDIS_CACHE_PREFIX ?? "cdc-storefront:";

function positiveInt(/** @type {string | undefined} */ s, /** @type {number} */ fallback) {
  const n = Number(s);
  return Number.isInteger(n) && n > 0 ? n : fallback;
}

/** Whether the shared cache is on for this process. */
function enabled() {
  return Boolean(process.env.REDIS_URL);
}

/**
 * Entries of one build must not be served by another (the markup differs), so entry
 * keys carry the build id. Tags do not: a revalidation is about data, for every build.
 */
function buildId() {
  try {
    return fs.readFileSync(path.join(process.cwd(), ".next", "BUILD_ID"), "utf8").trim();
  } catch {
    return "dev";
  }
}

/**
 * @typedef {{ client: import("redis").RedisClientType, build: string, lastError: number }} State
 * @returns {State}
 */
function state() {
  const g = /** @type {Record<symbol, State | undefined>} */ (/** @type {unknown} */ (globalThis));
  let s = g[STATE];
  if (!s) {
    const client = /** @type {import("redis").RedisClientType} */ (
      createClient({
        url: process.env.REDIS_URL,
        // While Redis is down, fail commands at once instead of queueing them until it
        // is back: a page must render now, from the database.
        disableOfflineQueue: true,
        socket: {
          connectTimeout: 2000,
          // Keep trying in the background, at most every 500 ms, so the cache comes back
          // by itself soon after Redis does.
          reconnectStrategy: (retries) => Math.min(50 * 2 ** retries, 500),
        },
      })
    );
    const st = /** @type {State} */ ({ client, build: buildId(), lastError: 0 });
    client.on("error", (err) => {
      // Without a listener the client would throw; log at most every 10 s per process.
      const now = Date.now();
      if (now - st.lastError > 10_000) {
        st.lastError = now;
        console.warn(`shared cache: Redis error (pages render uncached until it is back): ${err?.message ?? err}`);
      }
    });
    client.connect().catch(() => {
      // Reported by the error listener; the client keeps reconnecting.
    });
    s = st;
    g[STATE] = s;
  }
  return s;
}

/** The client when it is connected, else null (callers then skip the cache). */
function ready() {
  const s = state();
  return s.client.isReady ? s.client : null;
}

/**
 * @template T
 * @param {Promise<T>} p
 * @returns {Promise<T>}
 */
function withTimeout(p) {
  /** @type {NodeJS.Timeout | undefined} */
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Redis did not answer within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    timer.unref();
  });
  return /** @type {Promise<T>} */ (Promise.race([p, timeout]).finally(() => clearTimeout(timer)));
}

const tagKey = (/** @type {string} */ tag) => `${PREFIX}tag:${tag}`;
const entryKey = (/** @type {string} */ kind, /** @type {string} */ key) => `${PREFIX}${kind}:${state().build}:${key}`;

/**
 * Records that `tags` were revalidated now, for every instance. Without `durations` (or
 * with `expire: 0`, what cdc-worker's route uses) entries carrying them are expired at
 * once; with `expire: N` they are stale now and expire in N seconds.
 * Throws when Redis cannot record it.
 *
 * @param {string[]} tags
 * @param {{ expire?: number }} [durations]
 */
async function recordTags(tags, durations) {
  if (tags.length === 0) return;
  const client = ready();
  if (!client) throw new Error("the shared cache (Redis) is unreachable");
  const now = Date.now();
  const expired = durations?.expire !== undefined ? now + durations.expire * 1000 : now;
  const stale = durations ? now : 0;
  const multi = client.multi();
  for (const tag of new Set(tags)) {
    multi.set(tagKey(tag), `${stale}:${expired}`, { expiration: { type: "EX", value: TAG_TTL_S } });
  }
  await withTimeout(multi.exec());
}

/**
 * How `tags` stand against an entry created at `timestamp`: "expired" (must not be
 * served), "stale" (serve once, refresh in the background) or "fresh". Throws on a
 * Redis failure (callers treat that as a miss).
 *
 * @param {import("redis").RedisClientType} client
 * @param {string[]} tags
 * @param {number} timestamp
 * @returns {Promise<"expired" | "stale" | "fresh">}
 */
async function tagState(client, tags, timestamp) {
  if (tags.length === 0) return "fresh";
  const values = await withTimeout(client.mGet(tags.map(tagKey)));
  const now = Date.now();
  let result = /** @type {"expired" | "stale" | "fresh"} */ ("fresh");
  for (const v of values) {
    if (v == null) continue;
    const [stale, expired] = String(v).split(":").map(Number);
    // `>=`: an entry created in the same millisecond as the revalidation may have read
    // the old data.
    if (expired >= timestamp && expired <= now) return "expired";
    if (stale >= timestamp) result = "stale";
  }
  return result;
}

/** Entry TTL in seconds from an `expire` in seconds (Infinity or missing: the maximum). */
function entryTtl(/** @type {number | undefined | false} */ expire) {
  if (typeof expire !== "number" || !Number.isFinite(expire)) return MAX_TTL_S;
  return Math.max(1, Math.min(MAX_TTL_S, Math.ceil(expire)));
}

/**
 * JSON with Buffers/Uint8Arrays (base64) and Maps kept: route-cache entries carry
 * `rscData` (Buffer) and `segmentData` (Map<string, Buffer>), which plain JSON loses.
 *
 * @param {unknown} v
 * @returns {unknown}
 */
function encode(v) {
  if (v instanceof Uint8Array) return { $b: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
  if (v instanceof Map) return { $m: [...v].map(([k, x]) => [k, encode(x)]) };
  if (Array.isArray(v)) return v.map(encode);
  if (v && typeof v === "object") {
    /** @type {Record<string, unknown>} */
    const out = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = encode(x);
    return out;
  }
  return v;
}

/**
 * @param {unknown} v
 * @returns {any}
 */
function decode(v) {
  if (Array.isArray(v)) return v.map(decode);
  if (v && typeof v === "object") {
    const o = /** @type {Record<string, unknown>} */ (v);
    if (typeof o.$b === "string" && Object.keys(o).length === 1) return Buffer.from(o.$b, "base64");
    if (Array.isArray(o.$m) && Object.keys(o).length === 1) {
      return new Map(o.$m.map(([k, x]) => [k, decode(x)]));
    }
    /** @type {Record<string, unknown>} */
    const out = {};
    for (const [k, x] of Object.entries(o)) out[k] = decode(x);
    return out;
  }
  return v;
}

module.exports = {
  enabled,
  ready,
  withTimeout,
  recordTags,
  tagState,
  entryKey,
  entryTtl,
  encode,
  decode,
  MAX_TTL_S,
  TAG_TTL_S,
};
