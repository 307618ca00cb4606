import { expireTags } from "@/lib/revalidate";
import { SIGNATURE_HEADER, verifySignature } from "@/lib/signature";

/**
 * POST /api/revalidate — the receiving end of cdc-worker's wire contract.
 *
 *   body:   JSON object with "tags": string[] (other fields ignored)
 *   header: x-cdc-signature: t=<unix ms>,v1=<lowercase hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *
 *   200 {"revalidated": n}   n = number of distinct tags expired
 *   400 body is not a JSON object with a string array "tags"
 *   401 header missing/malformed, timestamp more than 5 minutes off, or bad signature
 *   413 body larger than 1 MiB (checked before the signature)
 *   500 CDC_REVALIDATE_SECRET not configured
 *   503 the shared cache (REDIS_URL) could not record the tags; retry
 */
const MAX_TAG_LENGTH = 256; // Next.js ignores longer tags (NEXT_CACHE_TAG_MAX_LENGTH)

/**
 * The worker sends at most revalidate.max_batch_tags (500) tags of at most 256 characters:
 * about 130 KiB. Anything much larger is not from the worker, and the endpoint is public,
 * so it is refused before it is buffered or hashed.
 */
const MAX_BODY_BYTES = 1024 * 1024;

/**
 * The body as text, or null when it exceeds `max` bytes. A declared content-length is
 * checked first (nothing is read); a chunked body has none, so the bytes are also counted
 * as they arrive and reading stops at the first byte over the limit.
 */
async function readCapped(req: Request, max: number): Promise<string | null> {
  const declared = req.headers.get("content-length");
  if (declared !== null && /^\d+$/.test(declared.trim()) && Number(declared) > max) return null;
  if (req.body === null) return "";
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
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

function json(status: number, body: unknown): Response {
  return Response.json(body, { status, headers: { "cache-control": "no-store" } });
}

export async function POST(req: Request): Promise<Response> {
  const secret = process.env.CDC_REVALIDATE_SECRET;
  if (!secret) {
    return json(500, { error: "CDC_REVALIDATE_SECRET is not configured on the Next.js server" });
  }

  // Read the raw text first: the signature covers the exact bytes the worker sent.
  const raw = await readCapped(req, MAX_BODY_BYTES);
  if (raw === null) {
    return json(413, { error: `body larger than ${MAX_BODY_BYTES} bytes` });
  }

  const check = verifySignature(req.headers.get(SIGNATURE_HEADER), raw, secret);
  if (!check.ok) {
    const error = {
      missing: `missing ${SIGNATURE_HEADER} header`,
      malformed: `malformed ${SIGNATURE_HEADER} header (want t=<unix ms>,v1=<hex sha256 hmac>)`,
      expired: "signature timestamp outside the allowed 5 minute window",
      mismatch: "signature mismatch",
    }[check.reason];
    return json(401, { error });
  }

  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    return json(400, { error: "body is not valid JSON" });
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return json(400, { error: "body must be a JSON object" });
  }
  const tags = (body as { tags?: unknown }).tags;
  if (!Array.isArray(tags) || !tags.every((t) => typeof t === "string")) {
    return json(400, { error: '"tags" must be an array of strings' });
  }
  if (tags.some((t: string) => t.length === 0 || t.length > MAX_TAG_LENGTH)) {
    return json(400, { error: `each tag must be 1..${MAX_TAG_LENGTH} characters` });
  }

  const unique = [...new Set(tags as string[])];
  try {
    await expireTags(unique);
  } catch (e) {
    // Shared cache unreachable: not recorded for the other instances, so not a 200;
    // the worker keeps the tags and retries.
    return json(503, { error: `tags not recorded: ${e instanceof Error ? e.message : String(e)}` });
  }
  return json(200, { revalidated: unique.length });
}
