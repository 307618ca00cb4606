-- Synthetic catalogue for bench/reconcile.sh: :products products (psql variable) in 50
-- stores, each with a USD price, 2 inventory rows and 1 image. Ids are md5-based, like
-- cuids in that index order is not insertion order.
INSERT INTO "Product" ("id", "storeId", "title", "description", "active")
SELECT 'c' || md5(i::text), 'store-' || (i % 50), 'Product ' || i, NULL, i % 10 <> 0
FROM generate_series(1, :products) i;

INSERT INTO "Price" ("id", "productId", "currency", "amount")
SELECT 'pr' || md5(i::text), 'c' || md5(i::text), 'USD', 100 + i % 10000
FROM generate_series(1, :products) i;

INSERT INTO "Inventory" ("id", "productId", "locationId", "quantity", "reserved")
SELECT 'in' || l || md5(i::text), 'c' || md5(i::text), 'loc-' || l, i % 37, i % 3
FROM generate_series(1, :products) i, generate_series(1, 2) l;

INSERT INTO "ProductImage" ("id", "productId", "url", "position")
SELECT 'im' || md5(i::text), 'c' || md5(i::text), 'https://img.example.com/' || i || '.jpg', 0
FROM generate_series(1, :products) i;

VACUUM ANALYZE "Product", "Price", "Inventory", "ProductImage";
