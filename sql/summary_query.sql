-- What a ProductSummary row is: the single definition, used by `run` (apply) and by
-- `reconcile`. It must return exactly these columns, one row per product that has a
-- price in the configured currency, which arrives as $1:
--
--   product_id, store_id, title, price, active, inventory_available, primary_image_url
--
-- The worker wraps it as `SELECT * FROM (<this query>) s WHERE s.product_id = ANY($2)`
-- (apply) or with a keyset range (reconcile); Postgres pushes those filters down into
-- the join, so keep it a plain SELECT without ORDER BY or LIMIT.
SELECT
    p."id"                                     AS product_id,
    p."storeId"                                AS store_id,
    p."title"                                  AS title,
    pr."amount"                                AS price,
    p."active"                                 AS active,
    COALESCE((SELECT sum(greatest(i."quantity" - i."reserved", 0))
                FROM "Inventory" i
               WHERE i."productId" = p."id"), 0)::int4 AS inventory_available,
    (SELECT im."url"
       FROM "ProductImage" im
      WHERE im."productId" = p."id"
      ORDER BY im."position", im."id"
      LIMIT 1)                                 AS primary_image_url
FROM "Product" p
JOIN "Price" pr ON pr."productId" = p."id" AND pr."currency" = $1
