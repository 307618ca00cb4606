// @ts-check
/**
 * Expiring cache tags from the app: for its own writes (revalidateProduct,
 * revalidateStore) and for the route handler (expireTags).
 */
import { revalidateTag } from "next/cache.js";
import * as shared from "./shared-cache.js";
import { inventoryTag, productTag, storeProductsTag } from "./tags.js";

/**
 * `revalidateTag(tag, { expire: 0 })`: in Next.js 16 the second argument is a cacheLife
 * profile; `expire: 0` makes cached entries carrying the tag expire at once, so the next
 * read is a cache miss (not a stale-while-revalidate hit, which `"max"` would give).
 *
 * @param {string} tag
 */
export function expireTag(tag) {
  revalidateTag(tag, { expire: 0 });
}

/**
 * Expires `tags` for every instance that can serve them, and only then returns: what the
 * route handler does before it answers 200.
 *
 * With the shared cache (REDIS_URL), the tags are first recorded in Redis and awaited,
 * because Next.js runs a route handler's revalidateTag() side effects after the response
 * and never reports their failure: a 200 must mean every instance now sees the tags. If
 * Redis cannot record them this throws (the route answers 503 and cdc-worker retries).
 * Without it, revalidateTag() expires this instance's own in-memory cache.
 *
 * @param {string[]} tags
 */
export async function expireTags(tags) {
  if (shared.enabled()) await shared.recordTags(tags, { expire: 0 });
  for (const tag of tags) expireTag(tag);
}

/**
 * Expires, at once, every cached read that depends on a product: its summary, its
 * inventory and, when `storeId` is given, its store's listing. For the app's own writes
 * (a Server Action or a Route Handler, never during render), right after a write that
 * changes what the product's ProductSummary row shows: the app then reads its own writes
 * without waiting for cdc-worker, which sends the same tags a moment later (twice is
 * harmless). When a product moves between stores, call it for both stores.
 *
 * @param {string} productId
 * @param {string} [storeId]
 * @returns {string[]} the tags expired
 */
export function revalidateProduct(productId, storeId) {
  /** @type {string[]} */
  const tags = [productTag(productId), inventoryTag(productId)];
  if (storeId) tags.push(storeProductsTag(storeId));
  for (const tag of tags) expireTag(tag);
  return tags;
}

/**
 * Expires a store's product listing (`store:{storeId}:products`), e.g. after a write
 * that adds or removes products of the store in bulk.
 *
 * @param {string} storeId
 * @returns {string[]} the tags expired
 */
export function revalidateStore(storeId) {
  const tags = [storeProductsTag(storeId)];
  for (const tag of tags) expireTag(tag);
  return tags;
}
