#!/usr/bin/env python3
"""Open-loop page views for bench/hot_tags.sh: GETs URL at RATE per second for SECS
seconds. View i starts at start + i/RATE on a pool of threads, whether or not earlier
views have finished (a slow server does not slow the arrivals down; views that cannot
start on time because every thread is busy start late and are counted as late; those
still waiting when SECS have passed are skipped).

Writes two tab-separated files:
  OUT.views     view id, start, end (Unix seconds), HTTP status, products shown
  OUT.products  view id, start, end, productId, inventory data-value (one line per
                product shown in that view)

    python3 bench/viewer.py URL RATE SECS OUT [THREADS]
"""
import http.client
import re
import sys
import threading
import time
import urllib.parse

url, rate, secs, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 16
u = urllib.parse.urlsplit(url)
path = u.path + ("?" + u.query if u.query else "")
# One product card: <article ... data-product-id="p0000042" ...> ... data-field="inventory"
# data-value="17" ... </article> (nextjs/app/product-card.tsx). The RSC payload repeats the
# values JSON-escaped (\"data-product-id\"), which this pattern does not match.
card = re.compile(
    r'<article[^>]*data-product-id="([^"]+)".*?data-field="inventory" data-value="(-?\d+)"',
    re.S,
)

total = int(rate * secs)
start = time.time() + 0.2
lock = threading.Lock()
next_view = 0
views, products = [], []
late = skipped = 0
local = threading.local()


def conn():
    if getattr(local, "c", None) is None:
        local.c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    return local.c


def worker():
    global next_view, late, skipped
    while True:
        with lock:
            i = next_view
            next_view += 1
        if i >= total:
            return
        due = start + i / rate
        if time.time() > start + secs:
            # The run is over: views that never got a thread are not made up for.
            with lock:
                skipped += 1
            continue
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.05:
            with lock:
                late += 1
        t0 = time.time()
        body, status = "", 0
        # A kept-alive connection the server closed meanwhile (Node closes idle ones
        # after 5 s) fails at once: then once more on a new one.
        for _ in range(2):
            reused = getattr(local, "c", None) is not None
            try:
                c = conn()
                c.request("GET", path)
                r = c.getresponse()
                body = r.read().decode("utf-8", "replace")
                status = r.status
                break
            except Exception:
                local.c = None
                if not reused:
                    break
        t1 = time.time()
        shown = card.findall(body)
        with lock:
            views.append(f"{i}\t{t0:.6f}\t{t1:.6f}\t{status}\t{len(shown)}\n")
            products.extend(f"{i}\t{t0:.6f}\t{t1:.6f}\t{p}\t{v}\n" for p, v in shown)


pool = [threading.Thread(target=worker) for _ in range(threads)]
for t in pool:
    t.start()
for t in pool:
    t.join()
with open(out + ".views", "w") as f:
    f.writelines(views)
with open(out + ".products", "w") as f:
    f.writelines(products)
print(f"views={len(views)} late={late} skipped={skipped}", file=sys.stderr)
