import type { CacheHandler } from "next/cache.js";

/** `cacheHandlers.default` / `.remote`: `'use cache'` entries and tag records in Redis (REDIS_URL). */
declare const handler: CacheHandler;
export default handler;
