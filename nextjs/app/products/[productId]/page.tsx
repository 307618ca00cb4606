import { Suspense } from "react";
import { connection } from "next/server";
import { getProduct } from "@/lib/data";
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
  // How long after the summary row last changed this page read it: the worker writes
  // `updatedAt` when it applies a change, and the cached read happens on the first
  // request after the revalidation, so a small number means the page refreshed right
  // after the change (a large one only means nobody looked at it for a while).
  const lagMs = Math.max(0, Date.parse(p.readAt) - Date.parse(p.updatedAt));
  return (
    <section>
      <a className="back" href={`/stores/${encodeURIComponent(p.storeId)}`}>
        ← Back to {p.storeId}
      </a>
      <div className="detail-wrap">
        <ProductCard p={p} variant="detail">
          <button className="button" type="button" aria-disabled={!p.active || p.inventoryAvailable <= 0}>
            {p.active && p.inventoryAvailable > 0 ? "Add to cart" : "Unavailable"}
          </button>
          <p className="freshness" data-field="freshness" data-value={String(lagMs)}>
            {`Updated ${formatLag(lagMs)} after the change (last change ${p.updatedAt.replace("T", " ").replace(/\.\d+Z$/, " UTC")}).`}
          </p>
        </ProductCard>
      </div>
    </section>
  );
}

function formatLag(ms: number): string {
  if (ms < 10_000) return `${ms} ms`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 2 * 3600_000) return `${Math.round(ms / 60_000)} min`;
  return `${Math.round(ms / 3600_000)} h`;
}
