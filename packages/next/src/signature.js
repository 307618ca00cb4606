// @ts-check
/**
 * The signature of cdc-worker's revalidation requests:
 *
 *   x-cdc-signature: t=<unix ms>,v1=<lowercase hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *
 * No dependency but node:crypto, so a shop's own tests can import
 * `@cdc-worker/next/signature` without Next.js.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

/** Name of the header cdc-worker signs its requests with. */
export const SIGNATURE_HEADER = "x-cdc-signature";

/** Accepted clock difference between worker and app, either direction. */
export const SIGNATURE_TOLERANCE_MS = 5 * 60 * 1000;

/**
 * `lowercase hex HMAC-SHA256(secret, "<t>.<body>")`: what the worker puts in `v1=`.
 *
 * @param {string} secret
 * @param {string | number} t unix milliseconds
 * @param {string} body the exact body text sent
 */
export function signatureOf(secret, t, body) {
  return createHmac("sha256", secret).update(`${t}.${body}`, "utf8").digest("hex");
}

/**
 * The whole `x-cdc-signature` header value for `body`, as cdc-worker sends it: for a
 * shop's own tests of its route, and for hand-made requests. Sign the bytes you send.
 *
 * @param {string} secret
 * @param {string} body
 * @param {number} [t] unix milliseconds (default now)
 */
export function sign(secret, body, t = Date.now()) {
  if (!Number.isSafeInteger(t) || t < 0) throw new TypeError(`t must be unix milliseconds, not ${t}`);
  return `t=${t},v1=${signatureOf(secret, t, body)}`;
}

/**
 * Checks `x-cdc-signature: t=<unix ms>,v1=<hex>` against the raw body text. Several `v1=`
 * entries are allowed (the worker may sign with an old and a new secret while they
 * rotate); any match is enough. Compared in constant time.
 *
 * @param {string | null} header
 * @param {string} body
 * @param {string} secret
 * @param {number} [now]
 * @returns {import("./signature.d.ts").SignatureCheck}
 */
export function verifySignature(header, body, secret, now = Date.now()) {
  if (header === null || header.trim() === "") return { ok: false, reason: "missing" };

  /** @type {string | undefined} */
  let t;
  /** @type {string[]} */
  const v1 = [];
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

  const expected = Buffer.from(signatureOf(secret, t, body), "hex");
  let match = false;
  for (const candidate of v1) {
    // Same length (32 bytes) by construction, as timingSafeEqual requires.
    if (timingSafeEqual(expected, Buffer.from(candidate, "hex"))) match = true;
  }
  return match ? { ok: true } : { ok: false, reason: "mismatch" };
}
