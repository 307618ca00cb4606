-- Reference source schema: the tables of a Next.js + Prisma shop, as `prisma migrate`
-- creates them (quoted camelCase identifiers, text ids, no database defaults for ids).
-- The demo and the tests load this file; a real shop already has these tables.

CREATE TABLE IF NOT EXISTS "Product" (
    "id" TEXT NOT NULL,
    "storeId" TEXT NOT NULL,
    "title" TEXT NOT NULL,
    "description" TEXT,
    "active" BOOLEAN NOT NULL DEFAULT true,
    "createdAt" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3),
    CONSTRAINT "Product_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "ProductImage" (
    "id" TEXT NOT NULL,
    "productId" TEXT NOT NULL,
    "url" TEXT NOT NULL,
    "position" INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT "ProductImage_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "ProductImage_productId_fkey" FOREIGN KEY ("productId")
        REFERENCES "Product"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
-- The summary query picks the first image of a product; without this index that is a scan.
CREATE INDEX IF NOT EXISTS "ProductImage_productId_position_idx"
    ON "ProductImage"("productId", "position", "id");

CREATE TABLE IF NOT EXISTS "Inventory" (
    "id" TEXT NOT NULL,
    "productId" TEXT NOT NULL,
    "locationId" TEXT NOT NULL,
    "quantity" INTEGER NOT NULL,
    "reserved" INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT "Inventory_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "Inventory_productId_fkey" FOREIGN KEY ("productId")
        REFERENCES "Product"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE UNIQUE INDEX IF NOT EXISTS "Inventory_productId_locationId_key"
    ON "Inventory"("productId", "locationId");

CREATE TABLE IF NOT EXISTS "Price" (
    "id" TEXT NOT NULL,
    "productId" TEXT NOT NULL,
    "currency" TEXT NOT NULL,
    "amount" INTEGER NOT NULL,
    CONSTRAINT "Price_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "Price_productId_fkey" FOREIGN KEY ("productId")
        REFERENCES "Product"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE UNIQUE INDEX IF NOT EXISTS "Price_productId_currency_key"
    ON "Price"("productId", "currency");
