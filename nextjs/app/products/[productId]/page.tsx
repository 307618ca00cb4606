import { Suspense } from "react";
import { connection } from "next/server";
import type { Revalidation } from "@cdc-worker/next";
import { getProduct, storeName } from "@/lib/data";
import { ProductCard } from "@/app/product-card";

type Props = { params: Promise<{ productId: string }> };

export default function ProductPage({ params }: Props) {
  return (
    <Suspense fallback={<p className="subtle">Loading…</p>}>
      <Product params={params} />
    </Suspense>
  );
}

async function Product({ params }: Props) {
  await connection();
  const { productId } = await params;
  const p = await getProduct(productId);
  // The page shell is already streaming (status 200) by the time we know, so a missing
  // product is reported in the markup rather than with a 404 status.
  if (!p) {
    return (
      <p data-not-found="product" data-product-id-missing={productId}>
        {`No product ${productId}.`}
      </p>
    );
  }
  const note = freshness(p.updatedAt, p.revalidation);
  return (
    <section>
      <a className="back" href={`/stores/${encodeURIComponent(p.storeId)}`}>
        ← Back to {storeName(p.storeId)}
      </a>
      <div className="detail-wrap">
        <ProductCard p={p} variant="detail">
          <button className="button" type="button" aria-disabled={!p.active || p.inventoryAvailable <= 0}>
            {p.active && p.inventoryAvailable > 0 ? "Add to cart" : "Unavailable"}
          </button>
          <p className="freshness" data-field="freshness" data-value={note.toSummaryMs ?? ""} data-to-tag-ms={note.toTagMs ?? ""}>
            {note.text}
          </p>
        </ProductCard>
      </div>
    </section>
  );
}

/**
 * The pipeline's delay for the change this page shows: from the source commit to the
 * summary row (its `updatedAt`, written by cdc-worker; both on the database's clock) and
 * to the revalidation this server received (its own clock). Known when this server
 * received the revalidation that brought the row (cdc-worker sends the commit time with
 * the tags); otherwise the note says only when the row was written. Neither figure
 * includes the time until someone opened the page.
 */
function freshness(updatedAt: string, told: Revalidation | null) {
  const written = Date.parse(updatedAt);
  const at = updatedAt.replace("T", " ").replace(/\.\d+Z$/, " UTC");
  if (!told || told.committedAt === null) {
    return { toSummaryMs: null, toTagMs: null, text: `Summary row last written by cdc-worker at ${at}.` };
  }
  const toSummaryMs = Math.max(0, written - told.committedAt);
  const toTagMs = Math.max(0, told.revalidatedAt - told.committedAt);
  return {
    toSummaryMs,
    toTagMs,
    text: `The last change reached the summary ${formatMs(toSummaryMs)} after its commit; this page's cache was revalidated ${formatMs(toTagMs)} after the commit.`,
  };
}

function formatMs(ms: number): string {
  if (ms < 10_000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  return `${Math.round(ms / 60_000)} min`;
}
