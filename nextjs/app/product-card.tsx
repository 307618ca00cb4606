import type { ProductSummary } from "@/lib/data";
import { formatPrice } from "@/lib/data";

/**
 * One product, marked up for machines as well as people. Every value a test may want
 * is in a `data-value` attribute (raw, unformatted); the text is for display.
 *
 *   <article data-product-id="…" data-store-id="…" data-updated-at="…">
 *     <… data-field="title" data-value="…">
 *     <… data-field="price" data-value="1299">$12.99</…>        (minor units)
 *     <… data-field="inventory" data-value="7">7 in stock</…>
 *     <… data-field="active" data-value="true|false">
 *     <… data-field="image" data-value="url or empty">
 *
 * `variant="card"` is a tile of the store grid, `variant="detail"` the product page.
 */
export function ProductCard({
  p,
  variant,
  children,
}: {
  p: ProductSummary;
  variant: "card" | "detail";
  children?: React.ReactNode;
}) {
  const href = `/products/${encodeURIComponent(p.productId)}`;
  const title = variant === "card" ? <a href={href}>{p.title}</a> : p.title;
  return (
    <article
      className={variant}
      data-product-id={p.productId}
      data-store-id={p.storeId}
      data-updated-at={p.updatedAt}
    >
      <div className="media" data-field="image" data-value={p.primaryImageUrl ?? ""}>
        {/* eslint-disable-next-line @next/next/no-img-element -- an SVG the app serves itself */}
        <img
          src={imageSrc(p)}
          alt={p.title}
          width={400}
          height={400}
          loading={variant === "card" ? "lazy" : "eager"}
        />
      </div>
      <div className="body">
        <h2 data-field="title" data-value={p.title}>
          {title}
        </h2>
        <div className="price" data-field="price" data-value={String(p.price)}>
          {formatPrice(p.price)}
        </div>
        <div className="row">
          <StockBadge available={p.inventoryAvailable} />
          <span className="status" data-field="active" data-value={String(p.active)}>
            {p.active ? "" : "Not for sale"}
          </span>
        </div>
        {children}
      </div>
    </article>
  );
}

/** Fewer than this many available reads "Only N left". */
const LOW_STOCK = 5;

function StockBadge({ available }: { available: number }) {
  const [cls, text] =
    available <= 0
      ? ["out", "Out of stock"]
      : available < LOW_STOCK
        ? ["low", `Only ${available} left`]
        : ["in", `${available} in stock`];
  return (
    <span className={`badge ${cls}`} data-field="inventory" data-value={String(available)}>
      {text}
    </span>
  );
}

/**
 * The product's own image when it is served by this app (a path such as
 * `/placeholder/mug-1-1.svg`) or when STOREFRONT_REMOTE_IMAGES=true; otherwise the app's
 * own placeholder, so that the example never depends on an image host it cannot reach.
 * A real shop would set STOREFRONT_REMOTE_IMAGES (or use next/image with remotePatterns).
 */
function imageSrc(p: ProductSummary): string {
  const url = p.primaryImageUrl;
  if (url && (url.startsWith("/") || process.env.STOREFRONT_REMOTE_IMAGES === "true")) return url;
  // The title picks the object drawn ("Enamel Mug #12": a mug).
  return `/placeholder/${encodeURIComponent(p.productId)}.svg?title=${encodeURIComponent(p.title)}`;
}
