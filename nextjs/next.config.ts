import type { NextConfig } from "next";
import { withSharedCache } from "@cdc-worker/next/config";

// withSharedCache: with REDIS_URL set, `'use cache'` entries, the route/ISR cache and tag
// invalidations live in Redis, shared by every instance, so cdc-worker's revalidation
// reaching any one instance refreshes them all. Without it each instance keeps its own
// in-memory cache and must receive every revalidation itself (list each one in
// CDC_REVALIDATE_URLS). Read when the server starts, so one build serves both.
const nextConfig: NextConfig = withSharedCache({
  // Enables `'use cache'` + `cacheTag()`/`cacheLife()` (lib/data.ts), the Next.js 16
  // caching mechanism that `revalidateTag()` invalidates.
  cacheComponents: true,
  // Recommended with cacheComponents for new apps (next 16.4 warns at start without it);
  // only affects <Link> prefetching, not server-side caching.
  partialPrefetching: true,
});

export default nextConfig;
