// @ts-check
"use strict";
/**
 * withSharedCache(nextConfig): the Next.js config of the shared cache. CommonJS, so that
 * any next.config (.ts, .js, .mjs) can load it.
 *
 * With REDIS_URL set it names this package's Redis handlers: `cacheHandler` (route/ISR
 * cache) and `cacheHandlers.default` and `.remote` (`'use cache'`), with
 * `cacheMaxMemorySize: 0`: no per-instance copy in front of Redis, which would serve what
 * another instance has already expired. Without REDIS_URL the config is returned as it is
 * (Next.js's per-instance in-memory cache). Next.js reads next.config again at `next
 * start`, so one build serves both modes.
 *
 * @template {import("next").NextConfig} T
 * @param {T} [config]
 * @returns {T}
 */
function withSharedCache(config) {
  const base = /** @type {T} */ (config ?? {});
  if (!process.env.REDIS_URL) return base;
  const useCache = require.resolve("./use-cache-handler.js");
  return {
    ...base,
    cacheHandler: require.resolve("./cache-handler.js"),
    cacheHandlers: { ...base.cacheHandlers, default: useCache, remote: useCache },
    cacheMaxMemorySize: 0,
  };
}

module.exports = { withSharedCache };
