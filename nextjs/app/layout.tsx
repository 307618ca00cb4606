import type { Metadata } from "next";
import type { ReactNode } from "react";

export const metadata: Metadata = {
  title: "cdc-worker example storefront",
  description: "Reads only the ProductSummary table kept fresh by cdc-worker",
};

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: "system-ui, sans-serif", margin: "2rem" }}>
        <nav>
          <a href="/">Stores</a>
        </nav>
        <main>{children}</main>
      </body>
    </html>
  );
}
