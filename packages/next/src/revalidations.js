// @ts-check
/**
 * The revalidations this process received, per tag: when it arrived and, for a tag of a
 * streamed change, when the newest source change it covers was committed (cdc-worker
 * sends that as `committed_at`). A page can then say how long the pipeline took: commit
 * to summary row, commit to revalidation. Kept in memory, newest 10 000 tags; with several
 * instances only the one the worker told knows (a page rendered elsewhere shows less).
 *
 * On globalThis: Next.js bundles the route handler and each page separately, and all of
 * them must see one map.
 */
const STATE = Symbol.for("@cdc-worker/next.revalidations");
const MAX_TAGS = 10_000;

/** @returns {Map<string, import("./index.d.ts").Revalidation>} */
function received() {
  const g = /** @type {Record<symbol, Map<string, import("./index.d.ts").Revalidation> | undefined>} */ (
    /** @type {unknown} */ (globalThis)
  );
  return (g[STATE] ??= new Map());
}

/**
 * @param {string[]} tags
 * @param {unknown} committedAt the request's `committed_at`: tag -> unix ms
 * @param {number} [now]
 */
export function noteRevalidations(tags, committedAt, now = Date.now()) {
  const map = received();
  const committed = committedAt && typeof committedAt === "object" ? /** @type {Record<string, unknown>} */ (committedAt) : {};
  for (const tag of tags) {
    const c = committed[tag];
    map.delete(tag); // re-inserted as the newest
    map.set(tag, { committedAt: typeof c === "number" && Number.isFinite(c) ? c : null, revalidatedAt: now });
    if (map.size > MAX_TAGS) {
      const oldest = map.keys().next().value;
      if (oldest !== undefined) map.delete(oldest);
    }
  }
}

/**
 * The last revalidation of `tag` this process received, or undefined.
 *
 * @param {string} tag
 * @returns {import("./index.d.ts").Revalidation | undefined}
 */
export function lastRevalidation(tag) {
  const r = received().get(tag);
  return r && { ...r };
}
