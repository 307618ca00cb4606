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
 */
import * as shared from "./shared-cache.js";

// Connect when Next.js loads the handler (at server start), not at the first request.
if (shared.enabled()) void shared.ready();

const TAGS_HEADER = "x-next-cache-tags";

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

class IsrCacheHandler {
  /** @param {unknown} _options */
  constructor(_options) {}

  /**
   * @param {string} key
   * @param {any} ctx
   */
  async get(key, ctx) {
    const client = await shared.ready();
    if (!client) return null;
    try {
      const raw = await shared.withTimeout(client.get(shared.entryKey("isr", key)));
      if (raw == null) return null;
      const data = shared.decode(JSON.parse(String(raw)));
      const verdict = await shared.tagState(client, tagsOf(data, ctx), data.lastModified);
      if (verdict === "expired") return null;
      // lastModified -1 is Next.js's "stale: regenerate before serving".
      return verdict === "stale" ? { ...data, lastModified: -1 } : data;
    } catch {
      return null; // a miss: rendered again
    }
  }

  /**
   * @param {string} key
   * @param {any} data
   * @param {any} ctx
   */
  async set(key, data, ctx) {
    const client = await shared.ready();
    if (!client) return;
    try {
      const k = shared.entryKey("isr", key);
      if (data == null) {
        await shared.withTimeout(client.del(k));
        return;
      }
      const expire = ctx?.cacheControl?.expire ?? (typeof data?.revalidate === "number" ? data.revalidate : undefined);
      const entry = { value: data, lastModified: Date.now(), cacheControl: ctx?.cacheControl };
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
