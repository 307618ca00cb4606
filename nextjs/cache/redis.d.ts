// Types of the part of cache/redis.js that the app's TypeScript uses (lib/revalidate.ts).
/** Whether the shared cache is on for this process (REDIS_URL is set). */
export function enabled(): boolean;
/** Records that `tags` were revalidated now, for every instance; throws when Redis cannot. */
export function recordTags(tags: string[], durations?: { expire?: number }): Promise<void>;
