// @ts-check
/**
 * The cache tags cdc-worker sends, as the pages must attach them. The worker builds the same
 * strings from its `revalidate.tags` templates (defaults below); a shop that changes those
 * templates tags its reads with its own strings instead of these builders.
 *
 *   product:{productId}          one product's summary (title, price, active, image)
 *   inventory:{productId}        one product's available inventory
 *   store:{storeId}:products     the listing of a store's products
 */

/** @param {string} productId */
export function productTag(productId) {
  return /** @type {`product:${string}`} */ (`product:${productId}`);
}

/** @param {string} productId */
export function inventoryTag(productId) {
  return /** @type {`inventory:${string}`} */ (`inventory:${productId}`);
}

/** @param {string} storeId */
export function storeProductsTag(storeId) {
  return /** @type {`store:${string}:products`} */ (`store:${storeId}:products`);
}
