#!/usr/bin/env node
// Print a valid x-cdc-signature header value for a request body (no dependencies).
//
//   CDC_REVALIDATE_SECRET=s3cret node scripts/sign.mjs '{"tags":["product:p1"]}'
//   -> t=1732480000000,v1=5f0c...
//
// Options: --t <unix ms> to sign with a given timestamp (e.g. an old one, to test the
// 401), --header to print "x-cdc-signature: <value>". The body may also come on stdin
// (`echo -n '{...}' | node scripts/sign.mjs -`). Sign the body byte for byte as sent:
// `curl --data-raw "$BODY"`, not a re-serialized copy.
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";

const args = process.argv.slice(2);
let t = String(Date.now());
let header = false;
let body;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--t") t = args[++i];
  else if (args[i] === "--header") header = true;
  else if (body === undefined) body = args[i];
  else usage(`unexpected argument ${args[i]}`);
}
if (body === undefined) usage("missing body");
if (body === "-") body = readFileSync(0, "utf8");
if (!/^\d+$/.test(t ?? "")) usage("--t must be unix milliseconds");
const secret = process.env.CDC_REVALIDATE_SECRET;
if (!secret) usage("CDC_REVALIDATE_SECRET is not set");

const v1 = createHmac("sha256", secret).update(`${t}.${body}`, "utf8").digest("hex");
const value = `t=${t},v1=${v1}`;
console.log(header ? `x-cdc-signature: ${value}` : value);

function usage(msg) {
  console.error(`sign.mjs: ${msg}\nusage: CDC_REVALIDATE_SECRET=... node scripts/sign.mjs [--t <unix ms>] [--header] '<body>' | -`);
  process.exit(2);
}
