/**
 * `cacheHandler`: the route/ISR cache in Redis (REDIS_URL), sharing tag records with the
 * `'use cache'` handler. Next.js constructs it with its options; it implements get, set,
 * revalidateTag and resetRequestCache.
 */
declare class IsrCacheHandler {
  constructor(options: unknown);
  get(key: string, ctx: unknown): Promise<unknown>;
  set(key: string, data: unknown, ctx: unknown): Promise<void>;
  revalidateTag(tags: string | string[], durations?: { expire?: number }): Promise<void>;
  resetRequestCache(): void;
}
export default IsrCacheHandler;
