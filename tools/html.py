"""HTML of search results: a static page (``tools.search --html``) and the page ``tools.serve`` serves."""
from __future__ import annotations

import base64
import html

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.query { margin-top: 1.2em; font-size: 1.15em; }
.hit { display: flex; align-items: center; gap: 1em; margin: .4em 0; }
.rank { width: 2em; text-align: right; color: #666; }
.score { width: 5em; font-family: monospace; }
.hit img { height: 72px; border: 1px solid #ccc; cursor: pointer; }
.hit video { height: 180px; border: 1px solid #ccc; }
.path { font-family: monospace; font-size: .85em; color: #444; word-break: break-all; }
.meta { color: #777; font-size: .85em; }
"""


def _hit_html(hit, image_src: str, link: str) -> str:
    e = hit.entry
    duration = f"{e.duration:.1f} s" if e.duration else ""
    return (f'<div class="hit" data-rank="{hit.rank}" data-path="{html.escape(e.path)}">'
            f'<span class="rank">{hit.rank}</span><span class="score">{hit.score:.4f}</span>'
            f'<a href="{html.escape(link)}"><img alt="{html.escape(e.name)}" src="{image_src}"></a>'
            f'<span><span class="path">{html.escape(e.path)}</span><br><span class="meta">{duration}</span></span></div>')


def results_page(searcher, results) -> str:
    """A self-contained page (frame strips inlined) for [(query, hits)], linking each video file."""
    from pathlib import Path

    parts = [f"<!doctype html><meta charset='utf-8'><title>UniVTR search</title><style>{STYLE}</style>",
             f"<p class='meta'>{html.escape(searcher.description)}; model {html.escape(searcher.header['model']['checkpoint'])}</p>"]
    for query, hits in results:
        parts.append(f"<div class='query'>{html.escape(query)}</div>")
        for hit in hits:
            thumb = searcher.store.thumb_path(hit.entry.path)
            src = "data:image/jpeg;base64," + base64.b64encode(thumb.read_bytes()).decode() if thumb.is_file() else ""
            parts.append(_hit_html(hit, src, Path(hit.entry.path).as_uri()))
    return "\n".join(parts) + "\n"


SEARCH_PAGE = """<!doctype html><meta charset="utf-8"><title>UniVTR search</title><style>%(style)s
form input[type=text] { width: 32em; font-size: 1.1em; padding: .3em; }
</style>
<form id="form"><input id="q" type="text" name="q" placeholder="describe a video" autofocus>
<input id="k" type="number" name="k" value="8" min="1" max="100" style="width:4em"><button>search</button></form>
<p class="meta">%(description)s</p>
<div id="results"></div>
<script>
const form = document.getElementById("form"), out = document.getElementById("results");
function esc(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }
async function search(q, k) {
  out.setAttribute("data-state", "loading");
  const r = await fetch("/api/search?q=" + encodeURIComponent(q) + "&k=" + k);
  const data = await r.json();
  if (!r.ok) { out.innerHTML = "<p>" + esc(data.error) + "</p>"; out.setAttribute("data-state", "error"); return; }
  out.innerHTML = "<div class='query'>" + esc(data.query) + "</div>" + data.results.map(h =>
    "<div class='hit' data-rank='" + h.rank + "' data-path='" + esc(h.path) + "'><span class='rank'>" + h.rank +
    "</span><span class='score'>" + h.score.toFixed(4) + "</span><img alt='" + esc(h.name) + "' src='" + h.thumb +
    "' data-video='" + h.video + "' title='click to play'><span><span class='path'>" + esc(h.path) +
    "</span><br><span class='meta'>" + (h.duration ? h.duration.toFixed(1) + " s" : "") + "</span></span></div>").join("");
  out.setAttribute("data-state", "done");
}
out.addEventListener("click", ev => {
  const img = ev.target.closest("img[data-video]");
  if (!img) return;
  const v = document.createElement("video");
  v.src = img.dataset.video; v.controls = true; v.autoplay = true; v.muted = true; v.loop = true;
  img.replaceWith(v);
});
form.addEventListener("submit", ev => { ev.preventDefault(); search(form.q.value, form.k.value);
  history.replaceState(null, "", "?q=" + encodeURIComponent(form.q.value)); });
const initial = new URLSearchParams(location.search).get("q");
if (initial) { form.q.value = initial; search(initial, form.k.value); }
</script>
"""


def search_page(description: str) -> str:
    return SEARCH_PAGE % {"style": STYLE, "description": html.escape(description)}
