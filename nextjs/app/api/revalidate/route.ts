import { createRevalidateHandler } from "@cdc-worker/next";

// POST /api/revalidate: where cdc-worker delivers its cache tags (CDC_REVALIDATE_URLS).
export const POST = createRevalidateHandler({ secret: process.env.CDC_REVALIDATE_SECRET });
