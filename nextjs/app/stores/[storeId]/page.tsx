import { Suspense } from "react";
import { connection } from "next/server";
import { getStoreProducts, STORE_LISTING_LIMIT } from "@/lib/data";
import { ProductCard } from "@/app/product-card";

type Props = { params: Promise<{ storeId: string }> };

export default function StorePage({ params }: Props) {
  return (
    <Suspense fallback={<p>Loading…</p>}>
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
      <h1>Store {storeId}</h1>
      <p>
        {products.length === 0
          ? "No products."
          : `Showing ${products.length} product${products.length === 1 ? "" : "s"} (at most ${STORE_LISTING_LIMIT}).`}
      </p>
      {products.map((p) => (
        <ProductCard key={p.productId} p={p} link />
      ))}
    </section>
  );
}
