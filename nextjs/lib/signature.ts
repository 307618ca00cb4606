import { createHmac, timingSafeEqual } from "node:crypto";

/** Name of the header cdc-worker signs its requests with. */
export const SIGNATURE_HEADER = "x-cdc-signature";

/** Accepted clock skew between worker and app, either direction. */
export const SIGNATURE_TOLERANCE_MS = 5 * 60 * 1000;

export type SignatureCheck =
  | { ok: true }
  | { ok: false; reason: "missing" | "malformed" | "expired" | "mismatch" };

/** `lowercase hex HMAC-SHA256(secret, "<t>.<body>")` — what the worker puts in `v1=`. */
export function sign(secret: string, t: string, body: string): string {
  return createHmac("sha256", secret).update(`${t}.${body}`, "utf8").digest("hex");
}

/**
 * Verify `x-cdc-signature: t=<unix ms>,v1=<hex>` against the raw body text.
 * Several `v1=` entries are allowed (secret rotation); any match is enough.
 */
export function verifySignature(
  header: string | null,
  body: string,
  secret: string,
  now: number = Date.now(),
): SignatureCheck {
  if (header === null || header.trim() === "") return { ok: false, reason: "missing" };

  let t: string | undefined;
  const v1: string[] = [];
  for (const part of header.split(",")) {
    const eq = part.indexOf("=");
    if (eq < 0) return { ok: false, reason: "malformed" };
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === "t") {
      if (t !== undefined) return { ok: false, reason: "malformed" };
      t = value;
    } else if (key === "v1") {
      v1.push(value);
    } // unknown keys (future schemes) are ignored
  }
  if (t === undefined || !/^\d{1,16}$/.test(t) || v1.length === 0) {
    return { ok: false, reason: "malformed" };
  }
  if (!v1.every((s) => /^[0-9a-f]{64}$/i.test(s))) return { ok: false, reason: "malformed" };

  if (Math.abs(now - Number(t)) > SIGNATURE_TOLERANCE_MS) return { ok: false, reason: "expired" };

  const expected = Buffer.from(sign(secret, t, body), "hex");
  let match = false;
  for (const candidate of v1) {
    // Same length (32 bytes) by construction, as timingSafeEqual requires.
    if (timingSafeEqual(expected, Buffer.from(candidate, "hex"))) match = true;
  }
  return match ? { ok: true } : { ok: false, reason: "mismatch" };
}
