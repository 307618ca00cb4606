// What the route handler remembers of the revalidations it accepted (lastRevalidation):
// the commit time cdc-worker sent per tag, or null, and the newest tags only.
import assert from "node:assert/strict";
import { test } from "node:test";
import { lastRevalidation } from "../src/index.js";
import { noteRevalidations } from "../src/revalidations.js";

test("each tag keeps its own commit time and the time it arrived", () => {
  noteRevalidations(["product:p1", "store:s1:products", "inventory:p1"], { "product:p1": 1700000000123, "inventory:p1": "x" }, 1700000000150);
  assert.deepEqual(lastRevalidation("product:p1"), { committedAt: 1700000000123, revalidatedAt: 1700000000150 });
  assert.deepEqual(lastRevalidation("store:s1:products"), { committedAt: null, revalidatedAt: 1700000000150 });
  assert.deepEqual(lastRevalidation("inventory:p1"), { committedAt: null, revalidatedAt: 1700000000150 }, "not a number");
  assert.equal(lastRevalidation("product:p2"), undefined);
  noteRevalidations(["product:p1"], undefined, 1700000000200);
  assert.deepEqual(lastRevalidation("product:p1"), { committedAt: null, revalidatedAt: 1700000000200 }, "the last one counts");
});

test("only the newest 10 000 tags are kept", () => {
  const tags = Array.from({ length: 10_001 }, (_, i) => `product:n${i}`);
  noteRevalidations(tags, {}, 1);
  assert.equal(lastRevalidation("product:n0"), undefined);
  assert.ok(lastRevalidation("product:n1"));
  assert.ok(lastRevalidation("product:n10000"));
});
