"""status: the jobs API (list, one job, cancel), authenticated like the poller, and a dashboard page.

    GET  /jobs?state=&limit=&after=   the newest jobs          (bearer token)
    GET  /jobs/ID                     one job, with its shards, queue position and capacity (bearer token)
    POST /jobs/ID:cancel              cancel a job             (bearer token)
    GET  /capacity                    each ledger's tokens and batches in flight against its limits (bearer token)
    GET  /dashboard                   the dashboard page       (no token: the page holds no data)

The dashboard is one self-contained page (inline CSS and JS, no external assets) that reads the jobs API
every 2 seconds. It takes the token from the URL fragment (`/dashboard#token=...`: a fragment is never
sent to the server, so never logged), keeps it in sessionStorage, removes it from the address bar, and
sends it as `Authorization: Bearer`; without a valid one it shows "unauthorised" and no data. The page is
kept in this file because only main.py and shared/ are deployed with the function (infra/package.py).
"""

import base64
import dataclasses
import hashlib

import flask
import functions_framework

from shared.auth import AuthError, authorize
from shared.bootstrap import context, setup_logging
from shared.config import get_settings
from shared.domain.jobs import JobState
from shared.errors import NotFound
from shared.services.cancel import cancel_job
from shared.views import describe_job, jobs_view

DASHBOARD_PATHS = ("/dashboard",)


@functions_framework.http
def status(request: flask.Request):
    setup_logging()
    path = request.path.rstrip("/")
    if path in DASHBOARD_PATHS and request.method in ("GET", "HEAD"):
        return _dashboard()
    try:
        authorize(request.headers.get("Authorization"), get_settings())
    except AuthError as exc:
        return {"error": exc.message}, exc.status
    ctx = context()
    if path in ("", "/jobs") and request.method == "GET":
        state = request.args.get("state")
        if state and state.upper() not in JobState.__members__:
            return {"error": f"unknown state {state!r}; states: {', '.join(JobState)}"}, 400
        try:
            limit = min(max(int(request.args.get("limit", 50)), 1), 500)
        except ValueError:
            return {"error": "limit must be an integer"}, 400
        jobs, next_token = ctx.jobs.list(
            state=JobState(state.upper()) if state else None, limit=limit, after=request.args.get("after"),
        )
        return {"jobs": jobs_view(ctx.jobs, jobs), "next": next_token}, 200
    if path.startswith("/jobs/"):
        job_id, _, verb = path[len("/jobs/"):].partition(":")
        if verb == "cancel" and request.method == "POST":
            try:
                result = cancel_job(ctx.for_invocation(), job_id)
            except NotFound:
                return {"error": f"no job {job_id}"}, 404
            return dataclasses.asdict(result), 202 if not result.cancelled else 200
        if not verb and request.method == "GET":
            view = describe_job(ctx.jobs, ctx.ledgers, job_id, ctx.clock())
            if view is None:
                return {"error": f"no job {job_id}"}, 404
            return view, 200
    if path == "/capacity" and request.method == "GET":
        ledgers = [ctx.ledgers.get(key) for key in ctx.ledgers.list_keys()]
        return {"ledgers": [{"ledger": ledger.key, **ledger.usage()} for ledger in ledgers if ledger]}, 200
    return {"error": "not found"}, 404


# -- the dashboard ----------------------------------------------------------------------------------------

_STYLE = """
:root { font: 14px/1.45 system-ui, sans-serif; color: #1f2328; background: #f6f8fa; }
body { margin: 0 auto; max-width: 1280px; padding: 1rem 1.5rem; }
header { display: flex; align-items: baseline; gap: 1.5rem; flex-wrap: wrap; margin-bottom: .8rem; }
h1 { font-size: 1.3rem; margin: 0; }
#updated { color: #57606a; }
#problem { background: #ffebe9; border: 1px solid #ff8182; padding: .6rem .8rem; border-radius: 6px; }
form { margin: .8rem 0; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid #d0d7de; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid #d0d7de; vertical-align: top; }
th { background: #eaeef2; font-weight: 600; white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; word-break: break-all; }
td:first-child code { white-space: nowrap; word-break: normal; }
td:nth-child(2) { min-width: 11rem; }
td:nth-child(2) code { word-break: normal; overflow-wrap: anywhere; }
tr[data-state=FAILED] progress { accent-color: #cf222e; }
tr[data-state=PARTIALLY_SUCCEEDED] progress { accent-color: #bf8700; }
tr[data-state=CANCELLED] progress { accent-color: #8c959f; }
progress { width: 8rem; height: .9rem; vertical-align: middle; accent-color: #2da44e; }
.pct { display: inline-block; min-width: 3.4rem; margin-left: .4rem; }
.state { font-size: 12px; font-weight: 600; padding: .1rem .45rem; border-radius: 1rem; white-space: nowrap; }
.SUBMITTING, .RUNNING, .COMPLETING { background: #ddf4ff; color: #0969da; }
.SUCCEEDED { background: #dafbe1; color: #116329; }
.PARTIALLY_SUCCEEDED { background: #fff8c5; color: #7d4e00; }
.FAILED { background: #ffebe9; color: #a40e26; }
.CANCELLED { background: #eaeef2; color: #57606a; }
.outputs { max-width: 26rem; }
.outputs div { margin: .1rem 0; }
.outputs a { margin-right: .5rem; }
.error { color: #a40e26; font-size: 12px; }
.waiting { color: #7d4e00; font-size: 12px; }
.reused, .changes, .reuse { color: #555; font-size: 12px; }
#capacity .ledger { margin: .2rem 0 .6rem; }
#capacity progress { margin: 0 .5rem; }
"""

_SCRIPT = """
"use strict";
const REFRESH_MS = 2000;
const TOKEN_KEY = "embedpipe.status.token";
const API = location.pathname.replace(/dashboard\\/?$/, "") + "jobs";
const $ = (id) => document.getElementById(id);
let timer = null;

// The token comes in the fragment (never sent to the server); keep it for this tab, out of the address bar.
function takeTokenFromFragment() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function age(iso) {
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

// gs://bucket/name -> a link to the object's page in the Cloud console, named by the file, the URI as its title.
function gsLink(uri) {
  const m = /^gs:\\/\\/([^/]+)\\/(.*)$/.exec(uri);
  if (!m) return el("code", {textContent: uri});
  const href = "https://console.cloud.google.com/storage/browser/_details/" + m[1] + "/" +
    m[2].split("/").map(encodeURIComponent).join("/");
  return el("a", {href, title: uri, target: "_blank", rel: "noopener noreferrer"}, m[2].split("/").pop());
}

function waiting(job) {
  return ["SUBMITTING", "RUNNING"].includes(job.state) && !job.first_admitted_at && job.counts.total > 0;
}

function showCapacity(ledgers) {
  $("capacity").replaceChildren(...ledgers.map((l) => {
    const limit = l.effective_limit;
    const used = limit ? Math.min(100, 100 * l.tokens_held / limit) : 0;
    return el("div", {className: "ledger"}, el("code", {textContent: l.ledger}),
              el("progress", {max: 100, value: used}),
              el("span", {textContent: ` ${l.tokens_held.toLocaleString()} tokens in flight of ` +
                (limit ? limit.toLocaleString() : "no limit") + `, ${l.batches_held} batches` +
                (l.refusals ? `, ${l.refusals} refused` : "")}));
  }));
}

function row(job) {
  const c = job.counts;
  const out = job.output || {};
  const outputs = el("td", {className: "outputs"});
  if (out.manifest) {
    outputs.append(el("div", {}, el("code", {textContent: out.prefix})),
                   el("div", {}, gsLink(out.manifest), el("span", {textContent: " " + out.files + " files"})));
  }
  const ch = out.changes;
  if (ch) {
    outputs.append(el("div", {className: "changes", textContent:
      `+${ch.added} added, ${ch.changed} changed, −${ch.removed} removed` + (ch.previous_manifest ? "" : " (first generation)")}));
  }
  const est = job.estimate || {};
  if (c.reused) {
    outputs.append(el("div", {className: "reuse", textContent:
      `${c.reused} reused: saved $${(est.saved_usd || 0).toFixed(4)}, cache $${(est.cache_usd || 0).toFixed(4)}`}));
  }
  const error = job.error ? el("div", {className: "error", textContent: job.error.code + ": " + job.error.message}) : null;
  const tr = el("tr", {},
    el("td", {}, el("code", {textContent: job.job_id})),
    el("td", {}, el("code", {textContent: job.source.name})),
    el("td", {}, el("span", {className: "state " + job.state, textContent: job.state}),
       waiting(job) ? el("div", {className: "waiting", textContent: "waiting for capacity"}) : null, error),
    el("td", {className: "num"}, el("progress", {max: 100, value: job.progress_percentage}),
       el("span", {className: "pct", textContent: job.progress_percentage.toFixed(1) + "%"})),
    el("td", {className: "num succeeded", textContent: c.succeeded},
       c.reused ? el("div", {className: "reused", textContent: c.reused + " reused"}) : null),
    el("td", {className: "num failed", textContent: c.failed}),
    el("td", {className: "num", textContent: c.total}),
    el("td", {className: "num", textContent: job.success_rate == null ? "–" : job.success_rate.toFixed(1) + "%"}),
    el("td", {className: "num", textContent: age(job.created_at)}),
    outputs);
  tr.dataset.job = job.job_id;
  tr.dataset.state = job.state;
  return tr;
}

function show(jobs) {
  $("problem").hidden = true;
  $("login").hidden = true;
  $("jobs").hidden = jobs.length === 0;
  $("empty").hidden = jobs.length !== 0;
  $("rows").replaceChildren(...jobs.map(row));
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function unauthorised(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("rows").replaceChildren();
  $("jobs").hidden = $("empty").hidden = true;
  $("problem").textContent = "unauthorised: " + why + ". Open this page as …/dashboard#token=TOKEN, or enter a token.";
  $("problem").hidden = false;
  $("login").hidden = false;
  $("updated").textContent = "";
}

async function refresh() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return unauthorised("no token");
  const state = $("state").value;
  try {
    const response = await fetch(API + "?limit=50" + (state ? "&state=" + state : ""),
                                 {headers: {Authorization: "Bearer " + token}, cache: "no-store"});
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      return unauthorised(body.error || "the token was refused");
    }
    if (!response.ok) throw new Error("the jobs API answered " + response.status);
    show((await response.json()).jobs);
    const capacity = await fetch(location.pathname.replace(/dashboard\\/?$/, "") + "capacity",
                                 {headers: {Authorization: "Bearer " + token}, cache: "no-store"});
    if (capacity.ok) showCapacity((await capacity.json()).ledgers);
  } catch (error) {
    $("problem").textContent = "cannot refresh: " + error.message + " (retrying)";
    $("problem").hidden = false;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  if ($("token").value) sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  refresh();
});
$("state").addEventListener("change", refresh);
window.addEventListener("hashchange", () => { takeTokenFromFragment(); refresh(); });
takeTokenFromFragment();
refresh();
"""

_STATES = "".join(f'<option value="{s.value}">{s.value}</option>' for s in JobState)

DASHBOARD_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Embedding jobs</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<header>
  <h1>Embedding jobs</h1>
  <label>State <select id="state"><option value="">all</option>{_STATES}</select></label>
  <span id="updated"></span>
</header>
<div id="capacity"></div>
<div id="problem" role="alert" hidden></div>
<form id="login" hidden><label>Token <input id="token" type="password" autocomplete="off"></label>
  <button>Use</button></form>
<table id="jobs" hidden>
  <thead><tr><th>Job</th><th>Source</th><th>State</th><th class="num">Progress</th><th class="num">Succeeded</th>
    <th class="num">Failed</th><th class="num">Total</th><th class="num">Success rate</th><th class="num">Age</th>
    <th>Outputs</th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<p id="empty" hidden>No jobs.</p>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Only this page's own inline script and style may run; it may talk to this origin only.
_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _dashboard() -> flask.Response:
    return flask.Response(DASHBOARD_HTML, status=200, mimetype="text/html", headers=_HEADERS)
