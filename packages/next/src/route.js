// @ts-check
/**
 * The receiving end of cdc-worker's wire contract, as a Next.js route handler:
 *
 *   // app/api/revalidate/route.ts
 *   export const POST = createRevalidateHandler({ secret: process.env.CDC_REVALIDATE_SECRET });
 *
 *   body:   JSON object with "tags": string[], optionally "committed_at": {tag: unix ms}
 *           (lastRevalidation()); other fields ignored
 *   header: x-cdc-signature: t=<unix ms>,v1=<lowercase hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *
 *   200 {"revalidated": n}   n = number of distinct tags expired
 *   400 body is not a JSON object with a string array "tags" (or a tag empty / too long)
 *   401 header missing/malformed, timestamp more than 5 minutes off, or bad signature
 *   413 body larger than 1 MiB (checked before the signature)
 *   500 no secret configured
 *   503 the shared cache (REDIS_URL) could not record the tags: the worker retries
 */
import { expireTags } from "./revalidate.js";
import { noteRevalidations } from "./revalidations.js";
import { SIGNATURE_HEADER, SIGNATURE_TOLERANCE_MS, verifySignature } from "./signature.js";

/** Next.js ignores longer tags (NEXT_CACHE_TAG_MAX_LENGTH). */
export const MAX_TAG_LENGTH = 256;

/**
 * The worker sends at most revalidate.max_batch_tags (500) tags of at most 256 characters:
 * about 130 KiB. Anything much larger is not from the worker, and the endpoint is public,
 * so it is refused before it is buffered or hashed.
 */
export const MAX_BODY_BYTES = 1024 * 1024;

/**
 * The body as text, or null when it exceeds `max` bytes. A declared content-length is
 * checked first (nothing is read); a chunked body has none, so the bytes are also counted
 * as they arrive and reading stops at the first byte over the limit.
 *
 * @param {Request} req
 * @param {number} max
 * @returns {Promise<string | null>}
 */
async function readCapped(req, max) {
  const declared = req.headers.get("content-length");
  if (declared !== null && /^\d+$/.test(declared.trim()) && Number(declared) > max) return null;
  if (req.body === null) return "";
  const reader = req.body.getReader();
  /** @type {Uint8Array[]} */
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > max) {
      await reader.cancel().catch(() => {});
      return null;
    }
    chunks.push(value);
  }
  // Same decoding as Request.text(): UTF-8, invalid sequences replaced, BOM dropped.
  return new TextDecoder().decode(Buffer.concat(chunks));
}

/**
 * @param {number} status
 * @param {unknown} body
 */
function json(status, body) {
  return Response.json(body, { status, headers: { "cache-control": "no-store" } });
}

const UNAUTHORIZED = {
  missing: `missing ${SIGNATURE_HEADER} header`,
  malformed: `malformed ${SIGNATURE_HEADER} header (want t=<unix ms>,v1=<hex sha256 hmac>)`,
  expired: `signature timestamp more than ${SIGNATURE_TOLERANCE_MS / 60_000} minutes off this server's clock`,
  mismatch: "signature mismatch",
};

/**
 * The POST handler of the route cdc-worker calls (`CDC_REVALIDATE_URLS`). `secret` is
 * read once, when the route module loads; an empty or missing secret makes every request
 * a 500 that says so (it does not fail `next build`, which runs without it).
 *
 * @param {{ secret: string | undefined }} options
 * @returns {(req: Request) => Promise<Response>}
 */
export function createRevalidateHandler(options) {
  const secret = options?.secret;
  return async function POST(req) {
    if (!secret) {
      return json(500, {
        error: "no revalidation secret on the Next.js server: set CDC_REVALIDATE_SECRET (the worker's value)",
      });
    }

    // Read the raw text first: the signature covers the exact bytes the worker sent.
    const raw = await readCapped(req, MAX_BODY_BYTES);
    if (raw === null) return json(413, { error: `body larger than ${MAX_BODY_BYTES} bytes` });

    const check = verifySignature(req.headers.get(SIGNATURE_HEADER), raw, secret);
    if (!check.ok) return json(401, { error: UNAUTHORIZED[check.reason] });

    /** @type {unknown} */
    let body;
    try {
      body = JSON.parse(raw);
    } catch {
      return json(400, { error: "body is not valid JSON" });
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      return json(400, { error: "body must be a JSON object" });
    }
    const tags = /** @type {{ tags?: unknown }} */ (body).tags;
    if (!Array.isArray(tags) || !tags.every((t) => typeof t === "string")) {
      return json(400, { error: '"tags" must be an array of strings' });
    }
    if (tags.some((t) => t.length === 0 || t.length > MAX_TAG_LENGTH)) {
      return json(400, { error: `each tag must be 1..${MAX_TAG_LENGTH} characters` });
    }

    const unique = [.../** @type {Set<string>} */ (new Set(tags))];
    try {
      await expireTags(unique);
    } catch (e) {
      // Shared cache unreachable: not recorded for the other instances, so not a 200;
      // the worker keeps the tags and retries.
      return json(503, { error: `tags not recorded: ${e instanceof Error ? e.message : String(e)}` });
    }
    noteRevalidations(unique, /** @type {{ committed_at?: unknown }} */ (body).committed_at);
    return json(200, { revalidated: unique.length });
  };
}
