-- The summary query of the snake_case shop (config/examples/snake_case/schema.sql): the
-- same seven columns as sql/summary_query.sql, under the same names, from its own tables.
-- $1 is the currency. Ids keep their own type (bigint); the worker casts as needed.
SELECT
    p.id                                       AS product_id,
    p.store_id                                 AS store_id,
    p.title                                    AS title,
    pr.amount_cents                            AS price,
    p.active                                   AS active,
    COALESCE((SELECT sum(greatest(i.on_hand - i.reserved, 0))
                FROM shop.inventory i
               WHERE i.product_id = p.id), 0)::int4 AS inventory_available,
    (SELECT im.url
       FROM shop.product_image im
      WHERE im.product_id = p.id
      ORDER BY im.sort_order, im.id
      LIMIT 1)                                 AS primary_image_url
FROM shop.product p
JOIN shop.price pr ON pr.product_id = p.id AND pr.currency = $1
