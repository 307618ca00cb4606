import type { NextConfig } from "next";

const nextConfig: NextConfig = {
  // Enables `'use cache'` + `cacheTag()`/`cacheLife()` (lib/data.ts), the Next.js 16
  // caching mechanism that `revalidateTag()` invalidates.
  cacheComponents: true,
  // Recommended with cacheComponents for new apps (next 16.4 warns at start without it);
  // only affects <Link> prefetching, not server-side caching.
  partialPrefetching: true,
};

export default nextConfig;
