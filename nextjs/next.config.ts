import type { NextConfig } from "next";

// The shared cache (cache/): with REDIS_URL set, `'use cache'` entries, the route/ISR
// cache and tag invalidations live in Redis, shared by every instance, so cdc-worker's
// revalidation reaching any one instance refreshes them all. Without it each instance
// keeps its own in-memory cache and must receive every revalidation itself (list each
// one in CDC_REVALIDATE_URLS). Read when the server starts, so one build serves both.
const sharedCache = Boolean(process.env.REDIS_URL);

const nextConfig: NextConfig = {
  // Enables `'use cache'` + `cacheTag()`/`cacheLife()` (lib/data.ts), the Next.js 16
  // caching mechanism that `revalidateTag()` invalidates.
  cacheComponents: true,
  // Recommended with cacheComponents for new apps (next 16.4 warns at start without it);
  // only affects <Link> prefetching, not server-side caching.
  partialPrefetching: true,
  // The Redis client is loaded by the cache handlers outside the bundle; keep the route
  // handler (lib/revalidate.ts) on that same module instead of a bundled copy.
  serverExternalPackages: ["redis", "@redis/client"],
  ...(sharedCache
    ? {
        cacheHandler: require.resolve("./cache/isr-cache-handler.js"),
        cacheHandlers: {
          default: require.resolve("./cache/use-cache-handler.js"),
          remote: require.resolve("./cache/use-cache-handler.js"),
        },
        // No per-instance copy in front of Redis: it would serve what another
        // instance has already expired.
        cacheMaxMemorySize: 0,
      }
    : {}),
};

export default nextConfig;
