/**
 * GET /placeholder/{name}.svg[?title=...] — a product picture drawn by the app itself, so
 * the example shop shows images without any external image host (and works offline).
 * The object drawn is the kind the name starts with (`mug-12-1.svg`, what the demo data's
 * images use) or the first kind the `title` names ("Enamel Mug #12"), so the picture
 * matches the product; otherwise, like the colours, it follows from a hash of the name,
 * so a product always gets the same picture. Immutable: cached by browsers for a year.
 */
const PALETTES = [
  ["#fde68a", "#b45309"],
  ["#bfdbfe", "#1d4ed8"],
  ["#bbf7d0", "#15803d"],
  ["#fbcfe8", "#be185d"],
  ["#ddd6fe", "#6d28d9"],
  ["#fed7aa", "#c2410c"],
  ["#a5f3fc", "#0e7490"],
] as const;

// Simple outlines on a 200x200 canvas, one per kind of KINDS.
const KINDS = ["mug", "tee", "cap", "poster", "socks", "tote"] as const;
const SHAPES = [
  '<rect x="55" y="60" width="75" height="90" rx="10"/><path d="M130 80 h15 a18 18 0 0 1 0 36 h-15" fill="none" stroke-width="10"/>',
  '<path d="M70 50 l-35 25 l15 25 l20 -10 v70 h60 v-70 l20 10 l15 -25 l-35 -25 q-30 20 -60 0z"/>',
  '<path d="M45 120 a55 55 0 0 1 110 0z"/><rect x="100" y="112" width="70" height="14" rx="7"/>',
  '<rect x="55" y="40" width="90" height="120" rx="4"/><circle cx="100" cy="85" r="20" fill="#fff" opacity="0.6"/>',
  '<path d="M85 40 h35 v80 l25 20 a15 15 0 0 1 -10 28 h-45 a8 8 0 0 1 -5 -5z"/>',
  '<rect x="50" y="75" width="100" height="90" rx="6"/><path d="M75 75 v-15 a25 25 0 0 1 50 0 v15" fill="none" stroke-width="8"/>',
] as const;

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The index in KINDS of the kind `name` starts with, or else the first one `title` names. */
function kindOf(name: string, title: string | null): number {
  const prefix = KINDS.findIndex((k) => name.toLowerCase().startsWith(`${k}-`));
  if (prefix >= 0 || !title) return prefix;
  const words = title.toLowerCase().split(/[^a-z]+/);
  for (const w of words) {
    const i = KINDS.findIndex((k) => k === w || `${k}s` === w || k === `${w}s`);
    if (i >= 0) return i;
  }
  return -1;
}

export async function GET(req: Request, ctx: { params: Promise<{ name: string }> }): Promise<Response> {
  const { name } = await ctx.params;
  const id = decodeURIComponent(name).replace(/\.svg$/, "").slice(0, 64);
  const h = hash(id);
  const [bg, fg] = PALETTES[h % PALETTES.length];
  const kind = kindOf(id, new URL(req.url).searchParams.get("title"));
  const shape = SHAPES[kind >= 0 ? kind : (h >>> 8) % SHAPES.length];
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 200" width="400" height="400">
<rect width="200" height="200" fill="${bg}"/>
<g fill="${fg}" stroke="${fg}" opacity="0.85">${shape}</g>
<text x="100" y="188" text-anchor="middle" font-family="system-ui, sans-serif" font-size="11" fill="${fg}">${escapeXml(id)}</text>
</svg>`;
  return new Response(svg, {
    headers: {
      "content-type": "image/svg+xml; charset=utf-8",
      "cache-control": "public, max-age=31536000, immutable",
    },
  });
}
