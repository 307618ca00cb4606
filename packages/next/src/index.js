// @ts-check
/**
 * @cdc-worker/next: the Next.js side of cdc-worker.
 *
 * - createRevalidateHandler(): the route handler cdc-worker delivers its tags to.
 * - revalidateProduct() / revalidateStore() / expireTags(): expire tags from the app's own writes.
 * - productTag() / inventoryTag() / storeProductsTag(): the tags the worker sends, for cacheTag().
 * - lastRevalidation(): when a tag's last revalidation arrived and its change was committed.
 * - sign() / verifySignature(): the wire contract's signature (also `@cdc-worker/next/signature`).
 * - The Redis cache handlers are separate entry points that next.config names
 *   (`@cdc-worker/next/config`'s withSharedCache() does it when REDIS_URL is set).
 */
export { createRevalidateHandler, MAX_BODY_BYTES, MAX_TAG_LENGTH } from "./route.js";
export { expireTag, expireTags, revalidateProduct, revalidateStore } from "./revalidate.js";
export { lastRevalidation } from "./revalidations.js";
export { inventoryTag, productTag, storeProductsTag } from "./tags.js";
export { SIGNATURE_HEADER, SIGNATURE_TOLERANCE_MS, sign, signatureOf, verifySignature } from "./signature.js";
