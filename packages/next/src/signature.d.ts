/** Name of the header cdc-worker signs its requests with: `x-cdc-signature`. */
export const SIGNATURE_HEADER: "x-cdc-signature";
/** Accepted clock difference between worker and app, either direction (5 minutes). */
export const SIGNATURE_TOLERANCE_MS: number;

export type SignatureCheck =
  | { ok: true }
  | { ok: false; reason: "missing" | "malformed" | "expired" | "mismatch" };

/** `lowercase hex HMAC-SHA256(secret, "<t>.<body>")`: what the worker puts in `v1=`. */
export function signatureOf(secret: string, t: string | number, body: string): string;

/**
 * The whole `x-cdc-signature` header value for `body` (`t=<unix ms>,v1=<hex>`), as
 * cdc-worker sends it. `t` defaults to now. Sign exactly the bytes you send.
 */
export function sign(secret: string, body: string, t?: number): string;

/**
 * Checks an `x-cdc-signature` header against the raw body text: at most 5 minutes off
 * `now`, any of several `v1=` entries matching, compared in constant time.
 */
export function verifySignature(header: string | null, body: string, secret: string, now?: number): SignatureCheck;
