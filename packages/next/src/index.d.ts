export { inventoryTag, productTag, storeProductsTag } from "./tags.js";
export {
  SIGNATURE_HEADER,
  SIGNATURE_TOLERANCE_MS,
  type SignatureCheck,
  sign,
  signatureOf,
  verifySignature,
} from "./signature.js";

/** Longest accepted body, bytes (1 MiB); larger bodies get 413 before the signature is checked. */
export const MAX_BODY_BYTES: number;
/** Longest accepted tag (256 characters, Next.js's own limit). */
export const MAX_TAG_LENGTH: number;

export interface RevalidateHandlerOptions {
  /**
   * The HMAC secret shared with cdc-worker (its `CDC_REVALIDATE_SECRET`). Empty or
   * missing: every request is answered 500, naming the setting.
   */
  secret: string | undefined;
}

/**
 * The route handler cdc-worker delivers its cache tags to:
 *
 * ```ts
 * // app/api/revalidate/route.ts
 * import { createRevalidateHandler } from "@cdc-worker/next";
 * export const POST = createRevalidateHandler({ secret: process.env.CDC_REVALIDATE_SECRET });
 * ```
 *
 * 413 for a body over 1 MiB (before the signature), 401 for a missing, malformed, stale
 * or wrong signature, 400 for a body that is not `{"tags": [string, ...]}`, then every tag
 * expired with `revalidateTag(tag, { expire: 0 })` (and recorded in Redis first when
 * REDIS_URL is set: 503 if it cannot be) and 200 `{"revalidated": n}`.
 */
export function createRevalidateHandler(options: RevalidateHandlerOptions): (req: Request) => Promise<Response>;

/** `revalidateTag(tag, { expire: 0 })`: entries carrying `tag` are expired at once. */
export function expireTag(tag: string): void;

/**
 * Expires `tags` on every instance: recorded in Redis first (awaited; throws when it
 * cannot be) when REDIS_URL is set, then `revalidateTag(tag, { expire: 0 })` each.
 */
export function expireTags(tags: string[]): Promise<void>;

/**
 * For the app's own writes (a Server Action or Route Handler, never during render):
 * expires `product:{id}`, `inventory:{id}` and, with `storeId`, `store:{storeId}:products`.
 * Returns the tags expired. When a product moves between stores, call it for both.
 */
export function revalidateProduct(productId: string, storeId?: string): string[];

/** Expires `store:{storeId}:products`. Returns the tags expired. */
export function revalidateStore(storeId: string): string[];

/** A revalidation this process received (see lastRevalidation). */
export interface Revalidation {
  /**
   * Commit time (unix ms, the database's clock) of the newest source change the tag
   * covers, as cdc-worker sent it; null for tags sent without one (`cdc-worker revalidate`).
   */
  committedAt: number | null;
  /** When the route handler accepted it (unix ms, this server's clock). */
  revalidatedAt: number;
}

/**
 * The last revalidation of `tag` that this process's route handler accepted, or undefined:
 * for a page that shows how long the pipeline took (commit to summary row: the row's
 * `updatedAt` minus `committedAt`; commit to revalidation: `revalidatedAt` minus
 * `committedAt`). In memory, newest 10 000 tags; with several instances only the one the
 * worker told knows.
 */
export function lastRevalidation(tag: string): Revalidation | undefined;
