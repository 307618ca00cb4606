// Compiled by test/types.test.js (tsc, nothing emitted): the package's public API used the
// way a shop's TypeScript uses it, through the package's own name and exports map.
import type { NextConfig } from "next";
import type { CacheHandler } from "next/cache.js";
import {
  createRevalidateHandler,
  expireTag,
  expireTags,
  inventoryTag,
  lastRevalidation,
  MAX_BODY_BYTES,
  MAX_TAG_LENGTH,
  productTag,
  revalidateProduct,
  revalidateStore,
  SIGNATURE_HEADER,
  SIGNATURE_TOLERANCE_MS,
  sign,
  signatureOf,
  storeProductsTag,
  verifySignature,
  type RevalidateHandlerOptions,
  type Revalidation,
  type SignatureCheck,
} from "@cdc-worker/next";
import * as signature from "@cdc-worker/next/signature";
import { withSharedCache } from "@cdc-worker/next/config";
import IsrCacheHandler from "@cdc-worker/next/cache-handler";
import useCacheHandler from "@cdc-worker/next/use-cache-handler";

const options: RevalidateHandlerOptions = { secret: process.env.CDC_REVALIDATE_SECRET };
export const POST: (req: Request) => Promise<Response> = createRevalidateHandler(options);

const p: `product:${string}` = productTag("p1");
const i: `inventory:${string}` = inventoryTag("p1");
const s: `store:${string}:products` = storeProductsTag("s1");
const tags: string[] = [...revalidateProduct("p1", "s1"), ...revalidateStore("s1"), p, i, s];
expireTag("product:p1");
const last: Revalidation | undefined = lastRevalidation(p);
const delay: number | null = last && last.committedAt !== null ? last.revalidatedAt - last.committedAt : null;
const done: Promise<void> = expireTags(tags);

const header: string = sign("secret", "{}");
const check: SignatureCheck = verifySignature(header, "{}", "secret", Date.now());
if (!check.ok) {
  const reason: "missing" | "malformed" | "expired" | "mismatch" = check.reason;
  void reason;
}
const name: "x-cdc-signature" = SIGNATURE_HEADER;
const hex: string = signatureOf("secret", 1, "{}");
const numbers: number[] = [MAX_BODY_BYTES, MAX_TAG_LENGTH, SIGNATURE_TOLERANCE_MS, signature.SIGNATURE_TOLERANCE_MS];

const config: NextConfig = withSharedCache({ cacheComponents: true });
const handler: CacheHandler = useCacheHandler;
const isr = new IsrCacheHandler({});

void [done, delay, name, hex, numbers, config, handler, isr, signature.sign("k", "b")];
