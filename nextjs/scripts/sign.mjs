#!/usr/bin/env node
// Print a valid x-cdc-signature header value for a request body (sign() of @cdc-worker/next).
//
//   CDC_REVALIDATE_SECRET=s3cret node scripts/sign.mjs '{"tags":["product:p1"]}'
//   -> t=1732480000000,v1=5f0c...
//
// Options: --t <unix ms> to sign with a given timestamp (e.g. an old one, to test the
// 401), --header to print "x-cdc-signature: <value>". The body may also come on stdin
// (`echo -n '{...}' | node scripts/sign.mjs -`). Sign the body byte for byte as sent:
// `curl --data-raw "$BODY"`, not a re-serialized copy.
import { readFileSync } from "node:fs";
import { SIGNATURE_HEADER, sign } from "@cdc-worker/next/signature";

const args = process.argv.slice(2);
let t = Date.now();
let header = false;
let body;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--t") {
    const v = args[++i] ?? "";
    if (!/^\d+$/.test(v)) usage("--t must be unix milliseconds");
    t = Number(v);
  } else if (args[i] === "--header") header = true;
  else if (body === undefined) body = args[i];
  else usage(`unexpected argument ${args[i]}`);
}
if (body === undefined) usage("missing body");
if (body === "-") body = readFileSync(0, "utf8");
const secret = process.env.CDC_REVALIDATE_SECRET;
if (!secret) usage("CDC_REVALIDATE_SECRET is not set");

const value = sign(secret, body, t);
console.log(header ? `${SIGNATURE_HEADER}: ${value}` : value);

function usage(msg) {
  console.error(`sign.mjs: ${msg}\nusage: CDC_REVALIDATE_SECRET=... node scripts/sign.mjs [--t <unix ms>] [--header] '<body>' | -`);
  process.exit(2);
}
