/** Tag of one product's summary data (title, price, active, image): `product:{productId}`. */
export function productTag(productId: string): `product:${string}`;
/** Tag of one product's available inventory: `inventory:{productId}`. */
export function inventoryTag(productId: string): `inventory:${string}`;
/** Tag of a store's product listing: `store:{storeId}:products`. */
export function storeProductsTag(storeId: string): `store:${string}:products`;
