import { revalidateTag } from "next/cache";
import * as sharedCache from "@/cache/redis";

/**
 * Cache tags shared by the storefront pages, the app's own write paths and cdc-worker.
 *
 * cdc-worker emits exactly these strings (see README "Wire contract"), so they must not
 * change without changing the worker:
 *
 *   product:{productId}          one product's summary (title, price, active, image)
 *   inventory:{productId}        one product's available inventory
 *   store:{storeId}:products     the listing of a store's products
 */

/** Tag of one product's summary data: `product:{productId}`. */
export function productTag(productId: string): `product:${string}` {
  return `product:${productId}`;
}

/** Tag of one product's inventory figure: `inventory:{productId}`. */
export function inventoryTag(productId: string): `inventory:${string}` {
  return `inventory:${productId}`;
}

/** Tag of a store's product listing: `store:{storeId}:products`. */
export function storeProductsTag(storeId: string): `store:${string}:products` {
  return `store:${storeId}:products`;
}

/**
 * Expire, immediately, every cached read that depends on a product: its summary, its
 * inventory and (when the store is known) its store's listing. The next request for
 * any of them reads the database again.
 *
 * Use it in the app's own write paths, right after a write that changes what a
 * ProductSummary row would show, for read-your-own-writes without waiting for
 * cdc-worker (the worker will send the same tags a moment later; revalidating twice
 * is harmless). Call it from a Server Action or a Route Handler, never during render.
 *
 *   'use server';
 *   export async function renameProduct(id: string, title: string) {
 *     const p = await prisma.product.update({ where: { id }, data: { title } });
 *     revalidateProduct(p.id, p.storeId);
 *   }
 *
 * Pass `storeId` whenever you have it: without it the store listing keeps showing the
 * old data until cdc-worker's revalidation arrives. When a product moves between
 * stores, call it for both the old and the new store.
 *
 * Returns the tags it revalidated.
 */
export function revalidateProduct(productId: string, storeId?: string): string[] {
  const tags: string[] = [productTag(productId), inventoryTag(productId)];
  if (storeId) tags.push(storeProductsTag(storeId));
  for (const tag of tags) expireTag(tag);
  return tags;
}

/**
 * `revalidateTag(tag, { expire: 0 })`: in Next.js 16 the second argument is a cacheLife
 * profile; `expire: 0` makes cached entries carrying the tag expire at once, so the
 * next read is a cache miss (not a stale-while-revalidate hit, which is what the
 * `"max"` profile would give).
 */
export function expireTag(tag: string): void {
  revalidateTag(tag, { expire: 0 });
}

/**
 * Expire `tags` for every instance that can serve them, and only then return: what
 * /api/revalidate does before answering 200.
 *
 * With the shared cache (REDIS_URL), the tags are first recorded in Redis and awaited,
 * because Next.js runs a route handler's revalidateTag() side effects after the response
 * and never reports their failure: a 200 must mean every instance now sees the tags.
 * If Redis cannot record them this throws, the route answers 503 and cdc-worker keeps
 * the tags and retries. Without it, revalidateTag() expires this instance's own
 * in-memory cache.
 */
export async function expireTags(tags: string[]): Promise<void> {
  if (sharedCache.enabled()) await sharedCache.recordTags(tags, { expire: 0 });
  for (const tag of tags) expireTag(tag);
}
