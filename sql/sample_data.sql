-- Sample shop data for the demo (scripts/demo.sh): 2 stores, 12 products, images, inventory at
-- two locations, prices in USD (all products) and EUR (even-numbered products only).
-- Ids are text, as Prisma's cuid()s would be; these are readable stand-ins.

INSERT INTO "Product" ("id", "storeId", "title", "description", "active", "updatedAt")
SELECT 'prod_' || lpad(n::text, 3, '0'),
       CASE WHEN n <= 6 THEN 'store_north' ELSE 'store_south' END,
       (ARRAY['Mug', 'T-shirt', 'Poster', 'Notebook', 'Sticker pack', 'Tote bag'])[1 + (n - 1) % 6]
           || ' #' || n,
       'Sample product ' || n,
       n % 5 <> 0,
       CURRENT_TIMESTAMP
FROM generate_series(1, 12) AS n
ON CONFLICT ("id") DO NOTHING;

-- Two images for most products; position decides the primary one.
INSERT INTO "ProductImage" ("id", "productId", "url", "position")
SELECT 'img_' || lpad(n::text, 3, '0') || '_' || pos,
       'prod_' || lpad(n::text, 3, '0'),
       'https://img.example.com/prod_' || lpad(n::text, 3, '0') || '/' || pos || '.jpg',
       pos
FROM generate_series(1, 12) AS n, generate_series(0, 1) AS pos
WHERE n % 4 <> 0
ON CONFLICT ("id") DO NOTHING;

INSERT INTO "Inventory" ("id", "productId", "locationId", "quantity", "reserved")
SELECT 'inv_' || lpad(n::text, 3, '0') || '_' || loc,
       'prod_' || lpad(n::text, 3, '0'),
       loc,
       (n * 7) % 20,
       n % 3
FROM generate_series(1, 12) AS n, unnest(ARRAY['warehouse_a', 'warehouse_b']) AS loc
ON CONFLICT ("id") DO NOTHING;

INSERT INTO "Price" ("id", "productId", "currency", "amount")
SELECT 'price_' || lpad(n::text, 3, '0') || '_' || cur,
       'prod_' || lpad(n::text, 3, '0'),
       cur,
       CASE cur WHEN 'USD' THEN 500 + n * 100 ELSE 450 + n * 90 END
FROM generate_series(1, 12) AS n, unnest(ARRAY['USD', 'EUR']) AS cur
WHERE cur = 'USD' OR n % 2 = 0
ON CONFLICT ("id") DO NOTHING;
