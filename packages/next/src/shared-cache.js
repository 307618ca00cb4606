// @ts-check
/**
 * The Redis side of the shared cache (on when REDIS_URL is set): one client per server
 * process, the tag records every instance reads, one clock, and the entry encoding.
 *
 * Used by both cache handlers (use-cache-handler.js for `'use cache'`, cache-handler.js
 * for the route/ISR cache) and by the route handler, which records the worker's tags
 * before it answers 200. Next.js loads the handlers outside the app bundle while the
 * route handler is bundled, so this module may be evaluated more than once in one
 * process: its state lives on globalThis, so there is still one client per process.
 *
 * Keys (PREFIX defaults to "cdc-next:"):
 *   PREFIX tag:<tag>              "<stale ms>:<expired ms>" of the tag's last revalidation
 *   PREFIX uc:<build>:<key>       a `'use cache'` entry (JSON, value base64)
 *   PREFIX isr:<build>:<key>      a route/ISR cache entry (JSON)
 *
 * One clock. An entry is expired when one of its tags was revalidated at or after the
 * entry's render started. Those two times are taken by different instances (one renders,
 * another receives the revalidation), so both are on Redis's clock: a tag record is
 * stamped by `TIME` inside the script that writes it, and an entry's render start, taken
 * by Next.js on this process's clock, is moved onto Redis's clock with an offset measured
 * by a `TIME` round trip. The offset is bounded by the round trip, and each conversion
 * rounds toward "older" (an entry then looks rendered a little earlier than it was, so
 * the error can only cost a render, never serve a stale entry). Instances' own clocks
 * may then be off by any amount; only Redis's clock must not be stepped backwards.
 *
 * Every entry gets a TTL of at most MAX_TTL; every tag record lives MAX_TTL + 1 day. So
 * a tag record always outlives every entry created before it: an entry can never be
 * served again because the record that invalidated it has expired. (With a
 * `maxmemory-policy`, use `volatile-ttl` or `noeviction`; an LRU policy could evict a
 * tag record before the entries it invalidates.)
 *
 * Failure policy: a read that fails or takes longer than REDIS_CACHE_TIMEOUT_MS is a
 * cache miss (the page renders from the database); a failed entry write is dropped; a
 * failed tag write is an error that the route handler turns into a 503, so cdc-worker
 * keeps the tag and retries it instead of an instance acknowledging an invalidation no
 * other instance will ever see.
 *
 * `redis` is an optional peer dependency: it is imported only once REDIS_URL is set.
 */
import fs from "node:fs";
import path from "node:path";

const STATE = Symbol.for("@cdc-worker/next.shared-cache");

const DAY_S = 24 * 60 * 60;

/** Longest life of a cached entry, seconds: the longest `expire` an app usually uses ("days": 7 days). */
export const MAX_TTL_S = positiveInt(process.env.REDIS_CACHE_MAX_TTL_SECONDS, 7 * DAY_S);
/** Tag records outlive every entry created before them (see above). */
export const TAG_TTL_S = MAX_TTL_S + DAY_S;
/** A Redis call slower than this is treated as a failure (a miss for reads). */
const TIMEOUT_MS = positiveInt(process.env.REDIS_CACHE_TIMEOUT_MS, 500);
const PREFIX = process.env.REDIS_CACHE_PREFIX ?? "cdc-next:";
/** One connection attempt, and how long the first callers of a process wait for it. */
const CONNECT_TIMEOUT_MS = 2000;
/** How long a measured clock offset is used before it is measured again. */
const CLOCK_SAMPLE_MS = 10_000;

function positiveInt(/** @type {string | undefined} */ s, /** @type {number} */ fallback) {
  const n = Number(s);
  return Number.isInteger(n) && n > 0 ? n : fallback;
}

/** Whether the shared cache is on for this process. */
export function enabled() {
  return Boolean(process.env.REDIS_URL);
}

/**
 * This process's clock as Next.js reads it: entry timestamps (`'use cache'` render
 * starts) and Next.js's own age checks use `performance.timeOrigin + performance.now()`,
 * not `Date.now()`, and the two can differ once the wall clock has been adjusted.
 */
export function localNow() {
  return performance.timeOrigin + performance.now();
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
 * A measured offset between this process's clock and Redis's: TIME answered `redis`,
 * sent at local `sent`, answered at local `received`.
 *
 * @typedef {{ redis: number, sent: number, received: number }} ClockSample
 * @typedef {import("redis").RedisClientType} Client
 * @typedef {{
 *   client: Client | null,
 *   firstConnect: Promise<void>,
 *   build: string,
 *   lastError: number,
 *   clock: ClockSample | null,
 *   sampling: Promise<ClockSample> | null,
 * }} State
 */

/** @returns {State} */
function state() {
  const g = /** @type {Record<symbol, State | undefined>} */ (/** @type {unknown} */ (globalThis));
  let s = g[STATE];
  if (!s) {
    s = /** @type {State} */ ({
      client: null,
      firstConnect: Promise.resolve(),
      build: buildId(),
      lastError: 0,
      clock: null,
      sampling: null,
    });
    // The first callers of a process wait for the first connection (loading the client
    // included), at most as long as a connection attempt may take; after that nobody
    // waits (Redis down: a miss at once).
    s.firstConnect = Promise.race([connect(s), new Promise((r) => setTimeout(r, CONNECT_TIMEOUT_MS).unref())]).then(() => {});
    g[STATE] = s;
  }
  return s;
}

/** @param {State} st */
async function connect(st) {
  try {
    // Not a static import: `redis` is optional, and a bundler must leave it to Node.
    const { createClient } = await import(/* webpackIgnore: true */ /* turbopackIgnore: true */ "redis").catch((err) => {
      throw err?.code === "ERR_MODULE_NOT_FOUND"
        ? new Error("REDIS_URL is set but the redis package is not installed (npm install redis)")
        : err;
    });
    const client = /** @type {Client} */ (
      createClient({
        url: process.env.REDIS_URL,
        // While Redis is down, fail commands at once instead of queueing them until it
        // is back: a page must render now, from the database.
        disableOfflineQueue: true,
        socket: {
          connectTimeout: CONNECT_TIMEOUT_MS,
          // Keep trying in the background, at most every 500 ms, so the cache comes back
          // by itself soon after Redis does.
          reconnectStrategy: (retries) => Math.min(50 * 2 ** retries, 500),
        },
      })
    );
    client.on("error", (/** @type {any} */ err) => {
      // Without a listener the client would throw; log at most every 10 s per process.
      const now = Date.now();
      if (now - st.lastError > 10_000) {
        st.lastError = now;
        console.warn(`shared cache: Redis error (pages render uncached until it is back): ${err?.message ?? err}`);
      }
    });
    // A Redis restarted (or failed over) may run another clock: measure it again.
    client.on("ready", () => {
      st.clock = null;
    });
    st.client = client;
    await client.connect();
  } catch (err) {
    const now = Date.now();
    if (now - st.lastError > 10_000) {
      st.lastError = now;
      console.warn(`shared cache: cannot connect to Redis (pages render uncached until it is back): ${/** @type {any} */ (err)?.message ?? err}`);
    }
  }
}

/** Closes this process's client, for tests (a server keeps it until it exits). */
export async function close() {
  const s = state();
  await s.firstConnect;
  s.client?.destroy();
}

/** The client when it is connected, else null (callers then skip the cache). */
export async function ready() {
  const s = state();
  await s.firstConnect;
  return s.client?.isReady ? s.client : null;
}

/**
 * @template T
 * @param {Promise<T>} p
 * @returns {Promise<T>}
 */
export function withTimeout(p) {
  /** @type {NodeJS.Timeout | undefined} */
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Redis did not answer within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    timer.unref();
  });
  return /** @type {Promise<T>} */ (Promise.race([p, timeout]).finally(() => clearTimeout(timer)));
}

const tagKey = (/** @type {string} */ tag) => `${PREFIX}tag:${tag}`;
export const entryKey = (/** @type {string} */ kind, /** @type {string} */ key) => `${PREFIX}${kind}:${state().build}:${key}`;

/**
 * The clock offset to Redis, measured at most CLOCK_SAMPLE_MS ago (one TIME round trip
 * when older). Throws on a Redis failure.
 *
 * @param {Client} client
 * @returns {Promise<ClockSample>}
 */
async function clock(client) {
  const s = state();
  if (s.clock && localNow() - s.clock.received < CLOCK_SAMPLE_MS) return s.clock;
  s.sampling ??= (async () => {
    try {
      const sent = localNow();
      const [secs, micros] = await withTimeout(client.time());
      const received = localNow();
      const sample = { redis: Number(secs) * 1000 + Number(micros) / 1000, sent, received };
      s.clock = sample;
      return sample;
    } finally {
      s.sampling = null;
    }
  })();
  return s.sampling;
}

/**
 * Converts a time of this process's clock (`localNow()`) to Redis's clock, rounded down
 * by up to the round trip of the measurement: the Redis time that TIME answered was read
 * at the latest when the answer arrived. Throws on a Redis failure.
 *
 * @param {Client} client
 * @param {number} local
 */
export async function toRedisTime(client, local) {
  const c = await clock(client);
  return local + (c.redis - c.received);
}

/**
 * Redis's time now, rounded up by up to the round trip of the measurement (the opposite
 * of toRedisTime): for "has this tag's expiry arrived", where late is the unsafe side.
 *
 * @param {Client} client
 */
async function redisNow(client) {
  const c = await clock(client);
  return localNow() + (c.redis - c.sent);
}

/**
 * Converts a time of Redis's clock back to this process's clock, for Next.js's own
 * comparisons (entry age, the tags a server action revalidated during its request);
 * rounded down like toRedisTime, since TIME was read at the earliest when it was sent.
 *
 * @param {Client} client
 * @param {number} redis
 */
export async function toLocalTime(client, redis) {
  const c = await clock(client);
  return redis - (c.redis - c.sent);
}

/**
 * Stamps every tag with Redis's TIME in one script: "expired at T" (or "stale at T,
 * expired at T + expire") for the records, and the time is Redis's whichever instance
 * records it. Returns the Redis time used, in ms.
 */
const RECORD_TAGS = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local expired = now
if ARGV[1] ~= '' then expired = now + tonumber(ARGV[1]) end
local stale = 0
if ARGV[2] == '1' then stale = now end
local value = string.format('%.3f:%.3f', stale, expired)
for _, key in ipairs(KEYS) do
  redis.call('SET', key, value, 'EX', ARGV[3])
end
return string.format('%.3f', now)
`;

/**
 * Records that `tags` were revalidated now (Redis's clock), for every instance. Without
 * `durations` (or with `expire: 0`, what the route handler uses) entries carrying them are
 * expired at once; with `expire: N` they are stale now and expire in N seconds.
 * Throws when Redis cannot record it.
 *
 * @param {string[]} tags
 * @param {{ expire?: number }} [durations]
 * @returns {Promise<number>} the Redis time of the record, ms
 */
export async function recordTags(tags, durations) {
  if (tags.length === 0) return NaN;
  const client = await ready();
  if (!client) throw new Error("the shared cache (Redis) is unreachable");
  const expireMs = durations?.expire !== undefined ? String(durations.expire * 1000) : "";
  const now = await withTimeout(
    client.eval(RECORD_TAGS, {
      keys: [...new Set(tags)].map(tagKey),
      arguments: [expireMs, durations ? "1" : "0", String(TAG_TTL_S)],
    })
  );
  return Number(now);
}

/**
 * How `tags` stand against an entry whose render started at `timestamp` (Redis's clock):
 * "expired" (must not be served), "stale" (serve once, refresh in the background) or
 * "fresh". Throws on a Redis failure (callers treat that as a miss).
 *
 * @param {Client} client
 * @param {string[]} tags
 * @param {number} timestamp
 * @returns {Promise<"expired" | "stale" | "fresh">}
 */
export async function tagState(client, tags, timestamp) {
  if (tags.length === 0) return "fresh";
  const values = await withTimeout(client.mGet(tags.map(tagKey)));
  const now = await redisNow(client);
  let result = /** @type {"expired" | "stale" | "fresh"} */ ("fresh");
  for (const v of values) {
    if (v == null) continue;
    const [stale, expired] = String(v).split(":").map(Number);
    // `>=`: an entry whose render started in the same instant as the revalidation may
    // have read the old data.
    if (expired >= timestamp && expired <= now) return "expired";
    if (stale >= timestamp) result = "stale";
  }
  return result;
}

/** Entry TTL in seconds from an `expire` in seconds (Infinity or missing: the maximum). */
export function entryTtl(/** @type {number | undefined | false} */ expire) {
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
export function encode(v) {
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
export function decode(v) {
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
