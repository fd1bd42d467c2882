"""The playground page served at ``/``: type a mention, its context and candidates (none with a
KB), pick an image (sent inline as a data: URL), press Link. The page streams the run from the
LangGraph API (``POST /runs/stream``, stream mode ``updates``, where each node's events ride),
showing each node as it arrives, then asks ``/trace-card`` for the answer's card (the trace page's
own rendering).

The page is static (no data, no key); its script is pinned by hash in the Content-Security-Policy
and it talks to its own origin only. The key, when the server wants one, is typed into the page
and sent in the ``x-api-key`` header; it is kept in the page's memory only.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from i2cr.trace_page import STYLE

_SCRIPT = r"""
'use strict';
const $ = (id) => document.getElementById(id);
let imageData = null;

function headers() {
  const h = {'Content-Type': 'application/json'};
  const key = $('key').value.trim();
  if (key) h['x-api-key'] = key;
  return h;
}

function candidates() {
  const out = [];
  for (const line of $('candidates').value.split('\n')) {
    if (!line.trim()) continue;
    const i = line.indexOf('|');
    out.push(i < 0 ? {name: line.trim(), desc: ''}
                   : {name: line.slice(0, i).trim(), desc: line.slice(i + 1).trim()});
  }
  return out;
}

function say(text, cls) {
  const s = $('status');
  s.textContent = text;
  s.className = cls || '';
}

function brief(node, upd) {
  if (!upd) return '';
  if (node === 'tes') return '→ ' + upd.choice;
  if (node === 'icr') return 'ICR ' + (upd.icr_score == null ? '–' : upd.icr_score.toFixed(3))
                              + ' (' + (upd.icr_decision || '') + ')';
  if (node === 'iav') return 'IAV ' + (upd.iav_score == null ? '–' : upd.iav_score.toFixed(2))
                              + (upd.iav_passed ? ' pass' : ' fail');
  if (node === 'prepare') return 'image ' + upd.image_status + ', IAV ' + (upd.iav_mode || 'none');
  if (node === 'vif') return 'tools used: ' + (upd.tools_used || []).join(', ');
  if (node === 'retrieve') return (upd.candidates || []).length + ' candidate(s) from the KB';
  if (node === 'final') return upd.answer + ' (' + upd.final_reason + ')';
  return '';
}

function addNode(node, upd) {
  const li = document.createElement('li');
  li.className = 'node';
  li.dataset.node = node;
  const b = document.createElement('b');
  b.textContent = node;
  li.appendChild(b);
  li.appendChild(document.createTextNode(' ' + brief(node, upd)));
  $('live').appendChild(li);
}

async function readStream(resp, onPart) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true}).replace(/\r\n/g, '\n');
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let ev = 'message', data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) ev = line.slice(6).trim();
        else if (line.startsWith('data:')) data += line.slice(5).trim();
      }
      if (data) onPart(ev, JSON.parse(data));
    }
  }
}

async function detail(resp) {
  try { const j = await resp.json(); return j.detail || JSON.stringify(j); }
  catch (e) { return resp.statusText; }
}

async function link(ev) {
  ev.preventDefault();
  $('live').innerHTML = '';
  $('answer').textContent = '';
  $('card').innerHTML = '';
  const input = {mention: $('mention').value, context: $('context').value,
                 candidates: candidates(), allow_nil: $('allow-nil').checked};
  if (imageData) input.image = imageData;
  let context = null;
  if ($('settings').value.trim()) {
    try { context = JSON.parse($('settings').value); }
    catch (e) { say('settings are not JSON: ' + e.message, 'error'); return; }
  }
  $('link').disabled = true;
  say('running…');
  const t0 = performance.now();
  const parts = [];
  let failed = null;
  try {
    const body = {assistant_id: 'i2cr', input: input, stream_mode: ['updates']};
    if (context) body.context = context;
    const resp = await fetch('runs/stream', {method: 'POST', headers: headers(),
                                             body: JSON.stringify(body)});
    if (!resp.ok) { failed = resp.status + ': ' + await detail(resp); return; }
    await readStream(resp, (event, data) => {
      if (event === 'updates') {
        parts.push({event: event, data: data});
        for (const node of Object.keys(data)) addNode(node, data[node]);
      } else if (event === 'error') {
        failed = (data && (data.message || data.error)) || 'the run failed';
      }
    });
    if (failed) return;
    say('building the trace…');
    const resp2 = await fetch('trace-card', {method: 'POST', headers: headers(), body: JSON.stringify(
      {input: input, parts: parts, elapsed_s: (performance.now() - t0) / 1000})});
    if (!resp2.ok) { failed = resp2.status + ': ' + await detail(resp2); return; }
    const out = await resp2.json();
    const rec = out.record;
    $('answer').textContent = rec.answer == null ? '(no answer)' : rec.answer;
    $('path').textContent = (rec.path || []).join(' → ');
    $('card').innerHTML = out.html;
    say('done in ' + ((performance.now() - t0) / 1000).toFixed(2) + ' s', 'done');
  } catch (e) {
    failed = String(e);
  } finally {
    $('link').disabled = false;
    if (failed) say('error: ' + failed, 'error');
  }
}

$('image').addEventListener('change', () => {
  const f = $('image').files[0];
  imageData = null;
  $('preview').removeAttribute('src');
  if (!f) return;
  const r = new FileReader();
  r.onload = () => { imageData = r.result; $('preview').src = r.result; };
  r.readAsDataURL(f);
});
$('form').addEventListener('submit', link);
"""

_PAGE_STYLE = """
form{display:grid;grid-template-columns:9em 1fr;gap:.4em .8em;max-width:60em;background:#fff;
padding:1em;box-shadow:0 1px 2px #0002}
form label{font-weight:bold;align-self:start;padding-top:.2em}
textarea,input[type=text],input[type=password]{font:inherit;width:100%;box-sizing:border-box}
#preview{max-height:120px} #live{list-style:none;padding-left:0} #live li{padding:.15em 0}
#live li b{display:inline-block;min-width:5em;color:#1c7ed6}
#status.error{color:#e03131;font-weight:bold} #status.done{color:#2f9e44}
.result{margin-top:1em;max-width:60em} #answer{font-size:1.3em;font-weight:bold}
"""

_BODY = """<!doctype html><html><head><meta charset="utf-8">
<meta name="referrer" content="no-referrer">
<title>i2cr playground</title><style>{style}</style></head><body>
<h1>i2cr playground</h1>
<p>Link one mention with the served graph. Candidates: one per line, <code>name | description</code>
(leave empty when the server has a knowledge base). The run is streamed from the LangGraph API:
each node shows as it finishes.</p>
<form id="form">
<label for="key">API key</label><input type="password" id="key" autocomplete="off"
 placeholder="only when the server wants one">
<label for="mention">Mention</label><input type="text" id="mention" required>
<label for="context">Context</label><textarea id="context" rows="3"></textarea>
<label for="candidates">Candidates</label><textarea id="candidates" rows="5"></textarea>
<label for="image">Image</label><div><input type="file" id="image" accept="image/*">
 <img id="preview" alt=""></div>
<label for="settings">Settings</label><input type="text" id="settings"
 placeholder='optional JSON, e.g. {"tools": "caption,tags"}'>
<label for="allow-nil">NIL allowed</label><input type="checkbox" id="allow-nil">
<span></span><div><button id="link" type="submit">Link</button> <span id="status"></span></div>
</form>
<div class="result"><h2>Run</h2><ol id="live"></ol>
<p>Answer: <span id="answer"></span></p><p>Path: <span id="path"></span></p>
<div id="card"></div></div>
<script>{script}</script></body></html>"""


@lru_cache(maxsize=1)
def page() -> tuple[str, str]:
    """(HTML, Content-Security-Policy) of the playground."""
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
           "img-src data:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
           "frame-ancestors 'none'")
    html = _BODY.replace("{style}", STYLE + _PAGE_STYLE).replace("{script}", _SCRIPT)
    return html, csp
