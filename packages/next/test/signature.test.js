// The wire contract's signature: what sign() makes, verifySignature() accepts, and the
// same known vector as the worker's own unit test (src/outbox/deliver.rs).
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { test } from "node:test";
import { inventoryTag, productTag, storeProductsTag } from "../src/index.js";
import { SIGNATURE_HEADER, sign, signatureOf, verifySignature } from "../src/signature.js";

test("sign() is t=<ms>,v1=<hex HMAC-SHA256(secret, '<t>.<body>')>, as the worker signs", () => {
  assert.equal(
    sign("s3cret", '{"tags":["a"]}', 1700000000000),
    "t=1700000000000,v1=8e0af4502aead9e5944c54e6365b3813f6fd3af01aad97b5bcc8f80ac9d32cd7"
  );
  const body = '{"tags":["product:p1"]}';
  const expected = createHmac("sha256", "s3cret").update(`1700000000000.${body}`).digest("hex");
  assert.equal(sign("s3cret", body, 1700000000000), `t=1700000000000,v1=${expected}`);
  assert.equal(signatureOf("s3cret", 1700000000000, body), expected);
  assert.equal(SIGNATURE_HEADER, "x-cdc-signature");
  assert.throws(() => sign("s3cret", body, -1), /unix milliseconds/);
});

test("verifySignature accepts its own signatures and rejects the rest, saying why", () => {
  const now = 1700000000000;
  const body = '{"tags":["a"]}';
  const good = sign("k", body, now);
  assert.deepEqual(verifySignature(good, body, "k", now), { ok: true });
  assert.deepEqual(verifySignature(good, body, "k", now + 5 * 60 * 1000), { ok: true });
  assert.deepEqual(verifySignature(good, body, "k", now + 5 * 60 * 1000 + 1), { ok: false, reason: "expired" });
  assert.deepEqual(verifySignature(good, body, "k", now - 5 * 60 * 1000 - 1), { ok: false, reason: "expired" });
  assert.deepEqual(verifySignature(good, `${body} `, "k", now), { ok: false, reason: "mismatch" });
  assert.deepEqual(verifySignature(good, body, "other", now), { ok: false, reason: "mismatch" });
  assert.deepEqual(verifySignature(null, body, "k", now), { ok: false, reason: "missing" });
  assert.deepEqual(verifySignature(" ", body, "k", now), { ok: false, reason: "missing" });
  for (const bad of ["t=1", "v1=00", "t=x,v1=" + "0".repeat(64), `t=${now},t=${now},v1=${"0".repeat(64)}`, `t=${now},v1=zz`, "garbage"]) {
    assert.deepEqual(verifySignature(bad, body, "k", now), { ok: false, reason: "malformed" }, bad);
  }
});

test("several v1= entries (a secret being rotated): any match is enough; unknown schemes are ignored", () => {
  const now = 1700000000000;
  const body = "{}";
  const header = `t=${now},v1=${signatureOf("old", now, body)},v1=${signatureOf("new", now, body)},v2=whatever`;
  assert.deepEqual(verifySignature(header, body, "new", now), { ok: true });
  assert.deepEqual(verifySignature(header, body, "old", now), { ok: true });
  assert.deepEqual(verifySignature(header, body, "third", now), { ok: false, reason: "mismatch" });
});

test("tag builders give the strings the worker sends", () => {
  assert.equal(productTag("p1"), "product:p1");
  assert.equal(inventoryTag("p1"), "inventory:p1");
  assert.equal(storeProductsTag("s1"), "store:s1:products");
});
