import { cacheLife, cacheTag } from "next/cache";
import { db } from "./db";
import { inventoryTag, lastRevalidation, productTag, storeProductsTag, type Revalidation } from "@cdc-worker/next";

/**
 * All storefront reads. They touch ONLY the denormalized "ProductSummary" table (kept
 * fresh by cdc-worker) — never Product/Inventory/Price/ProductImage.
 *
 * Each function is a `'use cache'` function: its result is cached per argument and
 * tagged (the tag builders of @cdc-worker/next, the strings the worker sends), so it is
 * served from cache until cdc-worker (POST /api/revalidate) or the app itself
 * (`revalidateProduct()`) expires one of its tags. `cacheLife("days")` is only a safety
 * net (background refresh after a day); freshness comes from the tags.
 */

export type ProductSummary = {
  productId: string;
  storeId: string;
  title: string;
  /** Integer minor units (cents). */
  price: number;
  active: boolean;
  inventoryAvailable: number;
  primaryImageUrl: string | null;
  /** ISO-8601. */
  updatedAt: string;
};

export const STORE_LISTING_LIMIT = 100;

const select = {
  productId: true,
  storeId: true,
  title: true,
  price: true,
  active: true,
  inventoryAvailable: true,
  primaryImageUrl: true,
  updatedAt: true,
} as const;

/** A row as Prisma returns it: the same fields, with updatedAt still a Date. */
type Row = Omit<ProductSummary, "updatedAt"> & { updatedAt: Date };

function toSummary(r: Row): ProductSummary {
  return { ...r, updatedAt: r.updatedAt.toISOString() };
}

/**
 * Active products of a store, by title (numbers in it in numeric order). Tagged `store:{storeId}:products` plus each shown
 * product's tags, or the store tag alone with `STOREFRONT_LISTING_TAGS=store`.
 *
 * The product tags let the app's own `revalidateProduct(id)` without a store refresh the
 * listing too. cdc-worker sends the store tag with every product change anyway, so with
 * the worker they add nothing, except when the store tag is throttled (the worker's
 * `revalidate.min_interval_ms`): then a change of any product shown here would still
 * re-render the listing at once through its product tags. Set
 * `STOREFRONT_LISTING_TAGS=store` together with such a throttle.
 */
export async function getStoreProducts(storeId: string): Promise<ProductSummary[]> {
  "use cache";
  cacheLife("days");
  cacheTag(storeProductsTag(storeId));
  // By title in natural order ("Mug #2" before "Mug #10"): each run of digits compared as
  // a number, by padding it to 12 digits in the sort key (Prisma's orderBy compares text).
  const rows = await db().$queryRaw<Row[]>`
    SELECT "productId", "storeId", "title", "price", "active", "inventoryAvailable",
           "primaryImageUrl", "updatedAt"
      FROM "ProductSummary"
     WHERE "storeId" = ${storeId} AND "active"
     ORDER BY (SELECT string_agg(m.part[1] || lpad(m.part[2], 12, '0'), '' ORDER BY m.n)
                 FROM regexp_matches("title", '(\\D*)(\\d*)', 'g') WITH ORDINALITY AS m(part, n)),
              "productId"
     LIMIT ${STORE_LISTING_LIMIT}`;
  // A product's own tags also refresh the listing that shows it; cacheTag allows at
  // most 128 tags per entry, so stay well under that.
  const productTags = rows.flatMap((r) => [productTag(r.productId), inventoryTag(r.productId)]);
  if (productTags.length > 0 && process.env.STOREFRONT_LISTING_TAGS !== "store") {
    cacheTag(...productTags.slice(0, 120));
  }
  // This body runs only when the cached entry is missing or expired: bench/hot_tags.sh
  // counts these lines as re-renders of the listing.
  if (process.env.STOREFRONT_LOG_LISTING_READS === "1") {
    console.log(`storefront: listing read from the database store=${storeId} t=${Date.now()}`);
  }
  return rows.map(toSummary);
}

/**
 * One product's summary, active or not (null if there is no row), with the last
 * revalidation of its tags that this server received (for the product page's freshness
 * note: commit to summary row, commit to revalidation), or null. Tagged `product:{id}` and
 * `inventory:{id}`.
 */
export async function getProduct(productId: string): Promise<(ProductSummary & { revalidation: Revalidation | null }) | null> {
  "use cache";
  cacheLife("days");
  cacheTag(productTag(productId), inventoryTag(productId));
  const row = await db().productSummary.findUnique({ where: { productId }, select });
  if (!row) return null;
  // This body runs after a revalidation expired the entry, so the newest of the two tags'
  // revalidations is the one that brought this row (unless nobody has looked since).
  const told = [lastRevalidation(productTag(productId)), lastRevalidation(inventoryTag(productId))]
    .filter((r): r is Revalidation => r !== undefined)
    .sort((a, b) => b.revalidatedAt - a.revalidatedAt);
  return { ...toSummary(row), revalidation: told[0] ?? null };
}

/** Store ids that have at least one active product (for the index page). */
export async function getStoreIds(limit = 20): Promise<string[]> {
  "use cache";
  cacheLife("hours");
  cacheTag("stores");
  const rows = await db().productSummary.findMany({
    where: { active: true },
    distinct: ["storeId"],
    select: { storeId: true },
    orderBy: { storeId: "asc" },
    take: limit,
  });
  return rows.map((r) => r.storeId);
}

/** A store's name from its id: "harbor-goods" is "Harbor Goods". */
export function storeName(storeId: string): string {
  return storeId
    .split(/[-_\s]+/)
    .filter(Boolean)
    .map((w) => w[0].toUpperCase() + w.slice(1))
    .join(" ");
}

/** Integer minor units to "$12.99". */
export function formatPrice(minor: number): string {
  const sign = minor < 0 ? "-" : "";
  const abs = Math.abs(minor);
  return `${sign}$${Math.floor(abs / 100).toLocaleString("en-US")}.${String(abs % 100).padStart(2, "0")}`;
}
