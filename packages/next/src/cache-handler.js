// @ts-check
/**
 * `cacheHandler` (the route/ISR cache: prerendered page shells, route handler responses,
 * `fetch` data) when REDIS_URL is set, backed by the same Redis as the `'use cache'`
 * handler (use-cache-handler.js), with the same tag records: a tag revalidated on one
 * instance is expired on all.
 *
 * get() checks the tags of the entry (the `x-next-cache-tags` header of a page or route
 * response, `ctx.tags`/`ctx.softTags` of a fetch) against the shared tag records itself:
 * Next.js's own tag manifest only knows this process's revalidations.
 *
 * Timestamps: unlike a `'use cache'` entry, an ISR entry reaches set() without the time
 * its render started, only after the render has read its data. Stamping it with the time
 * of set() would let a render that read the old data just before a revalidation, and
 * finished after it, count as newer than the revalidation: a stale page served until the
 * tag changes again. So a render's start is taken from the get() that preceded it: Next.js
 * asks the cache first, renders on a miss (or a stale or expired entry), then stores the
 * result. The earliest such get() of a key since its last set() is the entry's time, on
 * Redis's clock like every tag record (shared-cache.js).
 */
import * as shared from "./shared-cache.js";

// Connect when Next.js loads the handler (at server start), not at the first request.
if (shared.enabled()) void shared.ready();

const TAGS_HEADER = "x-next-cache-tags";

/**
 * When no get() of this process preceded a set() (or the one that did is older than
 * this), the render is assumed to have started this long before set(): Next.js's own
 * limit on a page's render (`staticPageGenerationTimeout`, 60 s). An older stamp only
 * costs a render, a newer one could hide a revalidation.
 */
const RENDER_BOUND_MS = 60_000;

/**
 * Start (this process's clock) of the render that will store each key: the first get()
 * that may be followed by a render, kept until the set() that stores its result.
 * @type {Map<string, number>}
 */
const renderStarts = new Map();
/** Keys whose render never stored anything are forgotten, oldest first, past this many. */
const MAX_RENDER_STARTS = 10_000;

/** @param {string} key @param {number} now */
function noteRenderStart(key, now) {
  const started = renderStarts.get(key);
  // A start older than any render can last belongs to a render that never stored
  // anything (it failed); start over.
  if (started !== undefined && now - started <= RENDER_BOUND_MS) return;
  renderStarts.delete(key);
  renderStarts.set(key, now);
  if (renderStarts.size > MAX_RENDER_STARTS) {
    const oldest = renderStarts.keys().next().value;
    if (oldest !== undefined) renderStarts.delete(oldest);
  }
}

/**
 * @param {any} data
 * @param {any} ctx
 * @returns {string[]}
 */
function tagsOf(data, ctx) {
  const value = data?.value;
  if (value?.kind === "FETCH") return [...(ctx?.tags ?? []), ...(ctx?.softTags ?? [])];
  const header = value?.headers?.[TAGS_HEADER];
  return typeof header === "string" && header ? header.split(",") : [];
}

/**
 * Whether Next.js will render the entry again in the background (its `revalidate` time
 * has passed): the same test as Next.js's IncrementalCache, on this process's clock.
 *
 * @param {any} data
 * @param {number} lastModified
 * @param {number} now
 */
function dueForRevalidation(data, lastModified, now) {
  const revalidate = data?.cacheControl?.revalidate ?? data?.value?.revalidate;
  return typeof revalidate === "number" && lastModified + revalidate * 1000 < now;
}

class IsrCacheHandler {
  /** @param {unknown} _options */
  constructor(_options) {}

  /**
   * @param {string} key
   * @param {any} ctx
   */
  async get(key, ctx) {
    const now = shared.localNow();
    const client = await shared.ready();
    if (!client) return null;
    try {
      const raw = await shared.withTimeout(client.get(shared.entryKey("isr", key)));
      if (raw == null) {
        noteRenderStart(key, now);
        return null;
      }
      const data = shared.decode(JSON.parse(String(raw)));
      const verdict = await shared.tagState(client, tagsOf(data, ctx), data.lastModified);
      if (verdict === "expired") {
        noteRenderStart(key, now);
        return null;
      }
      const lastModified = await shared.toLocalTime(client, data.lastModified);
      if (verdict === "stale" || dueForRevalidation(data, lastModified, now)) noteRenderStart(key, now);
      // lastModified -1 is Next.js's "stale: regenerate before serving".
      return { ...data, lastModified: verdict === "stale" ? -1 : lastModified };
    } catch {
      noteRenderStart(key, now);
      return null; // a miss: rendered again
    }
  }

  /**
   * @param {string} key
   * @param {any} data
   * @param {any} ctx
   */
  async set(key, data, ctx) {
    const now = shared.localNow();
    const started = renderStarts.get(key);
    renderStarts.delete(key);
    const client = await shared.ready();
    if (!client) return;
    try {
      const k = shared.entryKey("isr", key);
      if (data == null) {
        await shared.withTimeout(client.del(k));
        return;
      }
      const renderStart = started !== undefined && now - started <= RENDER_BOUND_MS ? started : now - RENDER_BOUND_MS;
      const expire = ctx?.cacheControl?.expire ?? (typeof data?.revalidate === "number" ? data.revalidate : undefined);
      const entry = {
        value: data,
        lastModified: await shared.toRedisTime(client, renderStart),
        cacheControl: ctx?.cacheControl,
      };
      await shared.withTimeout(
        client.set(k, JSON.stringify(shared.encode(entry)), {
          expiration: { type: "EX", value: shared.entryTtl(expire) },
        })
      );
    } catch {
      // Not cached this time.
    }
  }

  /**
   * @param {string | string[]} tags
   * @param {{ expire?: number }} [durations]
   */
  async revalidateTag(tags, durations) {
    await shared.recordTags(Array.isArray(tags) ? tags : [tags], durations);
  }

  resetRequestCache() {}
}

export default IsrCacheHandler;
