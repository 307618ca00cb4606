import { Suspense } from "react";
import { connection } from "next/server";
import { getStoreProducts, STORE_LISTING_LIMIT, storeName } from "@/lib/data";
import { ProductCard } from "@/app/product-card";

type Props = { params: Promise<{ storeId: string }> };

export default function StorePage({ params }: Props) {
  return (
    <Suspense fallback={<p className="subtle">Loading products…</p>}>
      <StoreListing params={params} />
    </Suspense>
  );
}

async function StoreListing({ params }: Props) {
  await connection();
  const { storeId } = await params;
  const products = await getStoreProducts(storeId);
  return (
    <section data-store-id={storeId} data-product-count={products.length}>
      <h1>{storeName(storeId)}</h1>
      <p className="subtle">
        {products.length === 0
          ? "No products."
          : `${products.length} product${products.length === 1 ? "" : "s"}${
              products.length === STORE_LISTING_LIMIT ? ` (the first ${STORE_LISTING_LIMIT})` : ""
            }, prices and stock live from the database.`}
      </p>
      <div className="grid">
        {products.map((p) => (
          <ProductCard key={p.productId} p={p} variant="card" />
        ))}
      </div>
    </section>
  );
}
