import { Suspense } from "react";
import { connection } from "next/server";
import { getProduct } from "@/lib/data";
import { ProductCard } from "@/app/product-card";

type Props = { params: Promise<{ productId: string }> };

export default function ProductPage({ params }: Props) {
  return (
    <Suspense fallback={<p>Loading…</p>}>
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
  return (
    <section>
      <p>
        <a href={`/stores/${encodeURIComponent(p.storeId)}`}>Back to store {p.storeId}</a>
      </p>
      <ProductCard p={p} link={false} />
    </section>
  );
}
