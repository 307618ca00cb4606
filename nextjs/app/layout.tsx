import type { Metadata, Viewport } from "next";
import type { ReactNode } from "react";
import "./globals.css";

export const metadata: Metadata = {
  title: "Corner Shop — cdc-worker example storefront",
  description: "Reads only the ProductSummary table kept fresh by cdc-worker",
};

export const viewport: Viewport = { width: "device-width", initialScale: 1 };

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body>
        <header className="site-header">
          <a className="brand" href="/">
            Corner Shop
          </a>
          <nav>
            <a href="/">Stores</a>
          </nav>
        </header>
        <main>{children}</main>
      </body>
    </html>
  );
}
