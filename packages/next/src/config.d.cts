import type { NextConfig } from "next";

/**
 * With REDIS_URL set, `config` plus this package's Redis cache handlers (`cacheHandler`,
 * `cacheHandlers.default` and `.remote`) and `cacheMaxMemorySize: 0`; without it,
 * `config` unchanged. Read at `next start`, so one build serves both modes.
 */
export function withSharedCache<T extends NextConfig>(config?: T): T;
