// The route handler's answers that do not need a running Next.js: the secret, the body cap
// (before the signature is checked), the signature, the body's shape, and 503 when the
// shared cache cannot record the tags. The 200 path needs Next.js's request context
// (revalidateTag): tests/nextjs_e2e.rs drives it through a real `next start`.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { freePort } from "./fixtures/redis.js";
import { createRevalidateHandler, MAX_BODY_BYTES, sign } from "../src/index.js";
import { close } from "../src/shared-cache.js";

const SECRET = "s3cret";
const POST = createRevalidateHandler({ secret: SECRET });

after(() => close());

function request(body, headers = {}) {
  return new Request("http://shop/api/revalidate", { method: "POST", body, headers, duplex: "half" });
}

async function answer(res) {
  return { status: res.status, body: await res.json() };
}

test("no secret: 500 naming the setting, for every request", async () => {
  for (const secret of [undefined, ""]) {
    const res = await answer(await createRevalidateHandler({ secret })(request("{}")));
    assert.equal(res.status, 500);
    assert.match(res.body.error, /CDC_REVALIDATE_SECRET/);
  }
});

test("a body over 1 MiB gets 413 before the signature is checked, with or without content-length", async () => {
  const big = "x".repeat(MAX_BODY_BYTES + 1);
  const declared = await POST(request(big, { "x-cdc-signature": "t=1,v1=00", "content-length": String(big.length) }));
  assert.equal(declared.status, 413);
  let sent = 0;
  const chunked = new ReadableStream({
    pull(controller) {
      if (sent > 2 * MAX_BODY_BYTES) return controller.close();
      sent += 64 * 1024;
      controller.enqueue(new Uint8Array(64 * 1024));
    },
  });
  const streamed = await POST(request(chunked, { "x-cdc-signature": "t=1,v1=00" }));
  assert.equal(streamed.status, 413);
  assert.ok(sent < 2 * MAX_BODY_BYTES, `reading stopped at the limit (read ${sent} bytes)`);
});

test("signatures: missing, malformed, too old, wrong secret: 401", async () => {
  const body = '{"tags":["product:p1"]}';
  const cases = {
    missing: {},
    malformed: { "x-cdc-signature": "v1=abc" },
    expired: { "x-cdc-signature": sign(SECRET, body, Date.now() - 6 * 60 * 1000) },
    mismatch: { "x-cdc-signature": sign("not-the-secret", body) },
    "another body": { "x-cdc-signature": sign(SECRET, '{"tags":["product:p2"]}') },
  };
  for (const [what, headers] of Object.entries(cases)) {
    const res = await answer(await POST(request(body, headers)));
    assert.equal(res.status, 401, what);
    assert.equal(typeof res.body.error, "string");
  }
});

test("a signed body that is not {tags: [string]} gets 400", async () => {
  for (const body of ["not json", "[]", '{"tags":"product:p1"}', '{"tags":[1]}', '{"tags":[""]}', `{"tags":["${"x".repeat(257)}"]}`]) {
    const res = await answer(await POST(request(body, { "x-cdc-signature": sign(SECRET, body) })));
    assert.equal(res.status, 400, body.slice(0, 40));
  }
});

test("with REDIS_URL set and Redis unreachable, a valid request gets 503 so the worker retries", async () => {
  process.env.REDIS_URL = `redis://127.0.0.1:${await freePort()}`;
  try {
    const body = '{"tags":["product:p1","product:p1"]}';
    const res = await answer(await POST(request(body, { "x-cdc-signature": sign(SECRET, body) })));
    assert.equal(res.status, 503);
    assert.match(res.body.error, /Redis/);
  } finally {
    delete process.env.REDIS_URL;
  }
});
