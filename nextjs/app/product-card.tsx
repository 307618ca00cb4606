import type { ProductSummary } from "@/lib/data";
import { formatPrice } from "@/lib/data";

/**
 * One product, marked up for machines as well as people. Every value a test may want
 * is in a `data-value` attribute (raw, unformatted); the text is for display.
 *
 *   <article data-product-id="…" data-store-id="…" data-updated-at="…">
 *     <… data-field="title" data-value="…">
 *     <… data-field="price" data-value="1299">$12.99</…>        (minor units)
 *     <… data-field="inventory" data-value="7">7 available</…>
 *     <… data-field="active" data-value="true|false">
 *     <… data-field="image" data-value="url or empty">
 */
export function ProductCard({ p, link }: { p: ProductSummary; link: boolean }) {
  const title = link ? <a href={`/products/${encodeURIComponent(p.productId)}`}>{p.title}</a> : p.title;
  return (
    <article
      data-product-id={p.productId}
      data-store-id={p.storeId}
      data-updated-at={p.updatedAt}
      style={{ borderBottom: "1px solid #ddd", padding: "0.75rem 0" }}
    >
      <h2 data-field="title" data-value={p.title} style={{ margin: 0, fontSize: "1.1rem" }}>
        {title}
      </h2>
      <div data-field="price" data-value={String(p.price)}>{formatPrice(p.price)}</div>
      <div data-field="inventory" data-value={String(p.inventoryAvailable)}>
        {p.inventoryAvailable > 0 ? `${p.inventoryAvailable} available` : "Out of stock"}
      </div>
      <div data-field="active" data-value={String(p.active)}>{p.active ? "Active" : "Inactive"}</div>
      <div data-field="image" data-value={p.primaryImageUrl ?? ""}>
        {p.primaryImageUrl ? (
          // eslint-disable-next-line @next/next/no-img-element -- arbitrary remote hosts
          <img src={p.primaryImageUrl} alt={p.title} width={120} height={120} />
        ) : (
          "No image"
        )}
      </div>
    </article>
  );
}
