-- Sample data for `make demo`: 5 stores, 200 products, USD and EUR prices, stock in two
-- warehouses, one or two images. Products 197-200 have no USD price (no summary row);
-- every 17th product is inactive.
--
-- Store ids are slugs the storefront shows as names ("harbor-goods": Harbor Goods). A
-- product's title names its kind (Mug, Tee, Cap, Poster, Socks, Tote) and its number, and
-- its images are the storefront's own drawings of that kind (/placeholder/<kind>-...svg),
-- so the picture matches the title without an image host.
INSERT INTO "Product" (id, "storeId", title, description, active, "createdAt", "updatedAt")
SELECT 'prod-' || g,
       (ARRAY['harbor-goods', 'maple-lane', 'north-pier', 'old-town-supply', 'riverside-market'])[1 + g % 5],
       (ARRAY['Enamel', 'Organic', 'Wool', 'Harbor', 'Striped', 'Canvas'])[1 + g % 6] || ' '
         || (ARRAY['Mug', 'Tee', 'Cap', 'Poster', 'Socks', 'Tote'])[1 + g % 6] || ' #' || g,
       'A fine product', g % 17 <> 0, now(), now()
FROM generate_series(1, 200) g;

INSERT INTO "Price" (id, "productId", currency, amount)
SELECT 'price-usd-' || g, 'prod-' || g, 'USD', 500 + (g * 37) % 4500
FROM generate_series(1, 196) g;
INSERT INTO "Price" (id, "productId", currency, amount)
SELECT 'price-eur-' || g, 'prod-' || g, 'EUR', 450 + (g * 31) % 4000
FROM generate_series(1, 200) g;

INSERT INTO "Inventory" (id, "productId", "locationId", quantity, reserved)
SELECT 'inv-' || g || '-' || w, 'prod-' || g, 'warehouse-' || w, (g * w * 7) % 40, (g + w) % 3
FROM generate_series(1, 200) g, generate_series(1, 2) w;

INSERT INTO "ProductImage" (id, "productId", url, position)
SELECT 'img-' || g || '-' || i, 'prod-' || g,
       '/placeholder/' || lower((ARRAY['Mug', 'Tee', 'Cap', 'Poster', 'Socks', 'Tote'])[1 + g % 6]) || '-' || g || '-' || i || '.svg',
       i
FROM generate_series(1, 200) g, generate_series(1, 1 + g % 2) i;
