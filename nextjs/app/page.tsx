import { Suspense } from "react";
import { connection } from "next/server";
import { getStoreIds, storeName } from "@/lib/data";

export default function Home() {
  return (
    <>
      <h1>Stores</h1>
      <p className="subtle">Pick a store to browse its products.</p>
      <Suspense fallback={<p className="subtle">Loading…</p>}>
        <StoreList />
      </Suspense>
    </>
  );
}

async function StoreList() {
  // Request time only: no database access during `next build`.
  await connection();
  const storeIds = await getStoreIds();
  if (storeIds.length === 0) return <p data-empty="stores">No stores yet.</p>;
  return (
    <ul className="store-list" data-list="stores">
      {storeIds.map((id) => (
        <li key={id} data-store-id={id}>
          <a href={`/stores/${encodeURIComponent(id)}`}>{storeName(id)}</a>
        </li>
      ))}
    </ul>
  );
}
