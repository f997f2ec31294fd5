// The FerryMQ web console: one page, a view per hash route (#/topics, #/message/<id>...).
// Every number comes from the door's HTTP admin API (api.js); docs/console.md lists
// which endpoint feeds which view. Text from the broker (names, bodies, properties)
// is only ever set as text, never as markup.

import { api, ApiError, credentials, seg, setCredentials } from "./api.js";
import { barChart, COLORS, formatNumber, lineChart, sparkline } from "./charts.js";

const main = document.getElementById("main");
const status = document.getElementById("status");
let timer = null;      // the current view's refresh
let generation = 0;    // bumps on every navigation: late answers of a left view are dropped
const WIDE = { width: 1200, height: 260 };  // a chart alone on its row: same text size as two side by side

// ------------------------------------------------------------------ helpers

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// Replace a node's children; null, undefined and false stand for "nothing here".
function fill(node, ...kids) {
  node.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
}

const when = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–");
const link = (href, text) => h("a", { href }, text);
const badge = (text, kind = text) => h("span", { class: `badge ${kind}` }, text);

function table(columns, rows, { empty = "nothing here" } = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)));
  const body = rows.length
    ? rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(r)))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "note" }, empty))];
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

function card(label, value, id = null) {
  return h("div", { class: "card", "data-card": id }, h("div", { class: "label" }, label),
           h("div", { class: "value" }, value));
}

function showError(err, where = status) {
  const text = err instanceof ApiError
    ? `${err.status} ${err.problem ? err.problem.code + ": " : ""}${err.message}`
    : String(err && err.message ? err.message : err);
  const box = h("div", { class: "error", role: "alert" }, text);
  if (err instanceof ApiError && err.status === 401) {
    box.appendChild(h("span", {}, " — ", h("a", { href: "#", onclick: (e) => { e.preventDefault(); openCredentials(); } },
                                          "give credentials")));
  }
  fill(where, box);
}

function body(m) {
  if ("body" in m) return typeof m.body === "string" ? m.body : JSON.stringify(m.body, null, 2);
  if ("body_base64" in m) return `(base64) ${m.body_base64}`;
  return "";
}

function refreshSeconds() {
  return Number(document.getElementById("refresh").value) || 0;
}

// Run load() now and every refresh interval while the view stays; errors show in the status line.
function every(load) {
  const mine = generation;
  const run = async () => {
    if (mine !== generation) return;
    try {
      await load(() => mine === generation);
      fill(status, );
    } catch (err) {
      if (mine === generation) showError(err);
    }
  };
  run();
  const s = refreshSeconds();
  if (s > 0) timer = setInterval(run, s * 1000);
}

// ------------------------------------------------------------------ views

async function overview(view) {
  const cards = h("div", { class: "cards" });
  const charts = h("div", { class: "charts" });
  view.append(h("h1", {}, "Overview"), cards, h("h2", {}, "Live throughput"), charts);
  every(async (alive) => {
    const [cluster, hist, tx, timers] = await Promise.all([
      api("/v1/cluster"), api("/v1/stats/history", { params: { lags: false } }),
      api("/v1/transactions", { params: { max: 1000 } }), api("/v1/timers", { params: { hours: 24 } })]);
    if (!alive()) return;
    const b = cluster.brokers[0];
    const last = (xs) => (xs && xs.length ? xs[xs.length - 1] : null);
    const conns = cluster.doors.reduce((n, d) => n + d.connections, 0);
    fill(cards, 
      card("broker", `${b.name} (${b.role})`, "broker"),
      card("up since", when(b.started_at).slice(0, 16)),
      card("messages in", formatNumber(b.messages_in), "messages-in"),
      card("in / s", formatNumber(last(hist.messages_in)), "rate-in"),
      card("out / s", formatNumber(last(hist.messages_out)), "rate-out"),
      card("topics", b.topics), card("groups", b.groups),
      card("connections", conns, "connections"),
      card("open transactions", tx.transactions.length),
      card("pending timers", formatNumber(timers.pending)));
    fill(charts, 
      h("div", { class: "panel", id: "chart-throughput" },
        lineChart([{ name: "messages in / s", values: hist.messages_in },
                   { name: "messages out / s", values: hist.messages_out }], hist.times,
                  { title: "Messages per second" })),
      h("div", { class: "panel", id: "chart-bytes" },
        lineChart([{ name: "bytes in / s", values: hist.bytes_in }], hist.times, { title: "Bytes in per second" })),
      h("div", { class: "panel", id: "chart-connections" },
        lineChart(Object.entries(hist.connections).map(([door, values]) => ({ name: door, values })),
                  hist.times, { title: "Connections per door" })));
  });
}

async function topics(view) {
  const holder = h("div");
  const chart = h("div", { class: "panel", id: "chart-topics" });
  view.append(h("h1", {}, "Topics"), chart, holder);
  every(async (alive) => {
    const [doc, hist] = await Promise.all([api("/v1/topics", { params: { stats: true } }),
                                           api("/v1/stats/history", { params: { lags: false } })]);
    if (!alive()) return;
    const rates = hist.topics;
    const last = (n) => { const xs = rates[n] || []; return xs.length ? xs[xs.length - 1] : null; };
    fill(holder, table([
      { label: "topic", cell: (t) => link(`#/topics/${seg(t.name)}`, t.name) },
      { label: "queues", num: true, cell: (t) => t.queues },
      { label: "messages stored", num: true, cell: (t) => formatNumber(t.messages) },
      { label: "messages in", num: true, cell: (t) => formatNumber(t.messages_in) },
      { label: "bytes in", num: true, cell: (t) => formatNumber(t.bytes_in) },
      { label: "in / s", num: true, cell: (t) => formatNumber(last(t.name)) },
      { label: "rate", cell: (t) => sparkline(rates[t.name] || []) },
      { label: "type", cell: (t) => t.message_type },
    ], doc.topics, { empty: "no topics yet" }));
    const listed = new Set(doc.topics.map((t) => t.name));  // system topics stay out of the chart
    const total = (xs) => xs.reduce((n, v) => n + (v || 0), 0);
    const busiest = Object.entries(rates).filter(([name]) => listed.has(name))
      .sort((a, b) => total(b[1]) - total(a[1])).slice(0, 10).map(([name, values]) => ({ name, values }));
    fill(chart, lineChart(busiest, hist.times, { title: "Messages in per second, per topic", ...WIDE }));
  });
}

async function topic(view, name) {
  const info = h("div");
  const chart = h("div", { class: "panel", id: "chart-topic" });
  view.append(h("h1", {}, `Topic ${name}`), info, chart);
  every(async (alive) => {
    const [t, hist] = await Promise.all([api(`/v1/topics/${seg(name)}`),
                                         api("/v1/stats/history", { params: { topic: name } })]);
    if (!alive()) return;
    fill(info, 
      h("div", { class: "cards" }, card("queues", t.queues), card("messages stored", formatNumber(t.messages)),
        card("messages in", formatNumber(t.messages_in)), card("bytes in", formatNumber(t.bytes_in)),
        card("permissions", t.perm), card("type", t.message_type)),
      h("h2", {}, "Queues"),
      table([
        { label: "queue", num: true, cell: (q) => q.queue },
        { label: "min offset", num: true, cell: (q) => q.min_offset },
        { label: "max offset", num: true, cell: (q) => q.max_offset },
        { label: "messages", num: true, cell: (q) => q.max_offset - q.min_offset },
        { label: "", cell: (q) => link(`#/messages?mode=offset&topic=${seg(name)}&queue=${q.queue}&offset=${q.min_offset}`, "browse") },
      ], t.queue_offsets),
      h("h2", {}, "Consumers"));
    const groups = {};
    for (const l of hist.lags) (groups[l.group] = groups[l.group] || []).push(l);
    info.appendChild(table([
      { label: "group", cell: (g) => link(`#/groups/${seg(g)}`, g) },
      { label: "lag now", num: true, cell: (g) => formatNumber(groups[g].reduce((n, l) => n + (l.lag[l.lag.length - 1] || 0), 0)) },
    ], Object.keys(groups), { empty: "no group has committed on this topic" }));
    fill(chart, lineChart([{ name: "messages in / s", values: hist.topics[name] || [] }], hist.times,
                                    { title: `Messages in per second: ${name}`, ...WIDE }));
  });
}

async function groups(view) {
  const holder = h("div");
  view.append(h("h1", {}, "Consumer groups"), holder);
  every(async (alive) => {
    const doc = await api("/v1/groups", { params: { stats: true } });
    if (!alive()) return;
    fill(holder, table([
      { label: "group", cell: (g) => link(`#/groups/${seg(g.name)}`, g.name) },
      { label: "lag", num: true, cell: (g) => formatNumber(g.lag) },
      { label: "topics", cell: (g) => g.topics.map((t) => t.topic).join(", ") },
      { label: "created", cell: (g) => (g.created ? "yes" : "offsets only") },
      { label: "max reconsume", num: true, cell: (g) => g.max_reconsume_times ?? "–" },
      { label: "", cell: (g) => link(`#/dlq/${seg(g.name)}`, "dead letters") },
    ], doc.groups, { empty: "no consumer groups yet" }));
  });
}

async function group(view, name) {
  const info = h("div");
  const chart = h("div", { class: "panel", id: "chart-lag" });
  view.append(h("h1", {}, `Group ${name}`), chart, info);
  every(async (alive) => {
    const [hist, lags] = await Promise.all([
      api("/v1/stats/history", { params: { group: name } }),
      api("/v1/groups", { params: { stats: true } })]);
    if (!alive()) return;
    const series = hist.lags.map((l) => ({ name: `${l.topic}:${l.queue}`, values: l.lag }));
    fill(chart, lineChart(series, hist.times, { title: "Lag per queue (messages)", ...WIDE }));
    let detail = null;
    try { detail = await api(`/v1/groups/${seg(name)}`); } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;  // a Kafka group: offsets only
    }
    if (!alive()) return;
    const rows = hist.lags.map((l) => ({ topic: l.topic, queue: l.queue, lag: l.lag[l.lag.length - 1] }));
    const g = lags.groups.find((x) => x.name === name);
    fill(info, 
      h("div", { class: "cards" }, card("lag", formatNumber(g ? g.lag : null), "group-lag"),
        card("max reconsume", detail ? detail.max_reconsume_times : "–"),
        card("dead letters", link(`#/dlq/${seg(name)}`, "show"))),
      h("h2", {}, "Lag per queue"),
      table([{ label: "topic", cell: (r) => link(`#/topics/${seg(r.topic)}`, r.topic) },
             { label: "queue", num: true, cell: (r) => r.queue },
             { label: "lag", num: true, cell: (r) => formatNumber(r.lag) }], rows,
            { empty: "this group has committed no offset" }),
      detail && detail.pop.length ? h("h2", {}, "Pop consumption") : null,
      detail && detail.pop.length ? table([
        { label: "topic", cell: (r) => r.topic }, { label: "queue", num: true, cell: (r) => r.queue },
        { label: "pop offset", num: true, cell: (r) => r.pop_offset },
        { label: "in flight", num: true, cell: (r) => r.in_flight },
        { label: "waiting redelivery", num: true, cell: (r) => r.ready }], detail.pop) : null);
  });
}

function messageRows(messages) {
  return table([
    { label: "id", cell: (m) => link(`#/message/${seg(m.id)}`, m.id) },
    { label: "topic", cell: (m) => m.topic },
    { label: "queue", num: true, cell: (m) => m.queue },
    { label: "offset", num: true, cell: (m) => m.offset },
    { label: "stored", cell: (m) => when(m.store_timestamp) },
    { label: "keys", cell: (m) => (m.keys || []).join(" ") },
    { label: "tag", cell: (m) => m.tag || "" },
    { label: "body", cell: (m) => h("code", {}, body(m).slice(0, 120)) },
  ], messages, { empty: "no message found" });
}

async function messages(view, query) {
  const modes = { id: "By id", key: "By key", time: "By time", offset: "By queue and offset" };
  let mode = query.get("mode") || "id";
  const results = h("div", { id: "results" });
  const tabs = h("div", { class: "tabs" });
  const form = h("form", { class: "search", id: "search" });
  view.append(h("h1", {}, "Messages"), tabs, form, results);
  const field = (name, label, attrs = {}) => h("label", {}, label,
    h("input", { name, value: query.get(name) || attrs.value || "", ...attrs }));
  const draw = () => {
    fill(tabs, ...Object.entries(modes).map(([m, label]) =>
      h("button", { type: "button", class: m === mode ? "active" : null, "data-mode": m,
                    onclick: () => { mode = m; draw(); } }, label)));
    const fields = {
      id: [field("id", "message id", { size: 40 })],
      key: [field("topic", "topic"), field("key", "key")],
      time: [field("topic", "topic"), field("time", "stored at or after (RFC 3339 or ms)",
                                           { value: new Date(Date.now() - 3600_000).toISOString() })],
      offset: [field("topic", "topic"), field("queue", "queue", { value: "0", size: 4 }),
               field("offset", "offset", { value: "0", size: 8 })],
    }[mode];
    fill(form, ...fields, field("max", "at most", { value: "20", size: 4 }),
                         h("button", { type: "submit", class: "primary" }, "Search"));
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const v = (k) => (f.get(k) || "").toString().trim();
    const max = Number(v("max")) || 20;
    fill(results, h("p", { class: "note" }, "searching…"));
    try {
      let found = [];
      if (mode === "id") {
        found = [await api(`/v1/messages/${seg(v("id"))}`)];
      } else if (mode === "key") {
        found = (await api(`/v1/topics/${seg(v("topic"))}/keys/${seg(v("key"))}`, { params: { max } })).messages;
      } else if (mode === "offset") {
        found = (await api(`/v1/topics/${seg(v("topic"))}/queues/${seg(v("queue"))}/messages`,
                           { params: { offset: v("offset"), max } })).messages;
      } else {
        const offs = await api(`/v1/topics/${seg(v("topic"))}/offsets`, { params: { time: v("time") } });
        for (const q of offs.queues) {
          if (q.offset >= q.max_offset) continue;
          const r = await api(`/v1/topics/${seg(v("topic"))}/queues/${q.queue}/messages`,
                              { params: { offset: q.offset, max } });
          found.push(...r.messages);
        }
        found.sort((a, b) => a.store_timestamp - b.store_timestamp);
        found = found.slice(0, max);
      }
      fill(results, messageRows(found));
    } catch (err) {
      if (err instanceof ApiError && err.status === 404 && mode === "id") fill(results, messageRows([]));
      else showError(err, results);
    }
  });
  draw();
  if (query.get("mode")) form.requestSubmit();
}

function properties(props) {
  const entries = Object.entries(props || {});
  if (!entries.length) return h("span", { class: "note" }, "none");
  return h("dl", { class: "kv" }, entries.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

const KIND_TEXT = {
  produced: "produced", timer: "waiting for its delivery time", delivered: "delivered by its timer",
  retry: "sent back for a retry", dead_letter: "dead-lettered", resent: "resent from the dead letters",
  half: "prepared (transaction half)", discarded_half: "discarded half (never decided)", copy: "stored again",
};

async function life(view, id) {
  const holder = h("div", { id: "life" });
  view.append(h("h1", {}, "Message ", h("code", {}, id)), holder);
  const draw = async () => {
    const doc = await api(`/v1/messages/${seg(id)}/life`);
    const first = doc.steps[0].message;
    const steps = doc.steps.map((s) => {
      const m = s.message;
      const consumers = s.consumers.length ? table([
        { label: "group", cell: (c) => link(`#/groups/${seg(c.group)}`, c.group) },
        { label: "committed offset", num: true, cell: (c) => c.committed ?? "–" },
        { label: "state", cell: (c) => badge(c.pop || (c.consumed ? "consumed" : "not yet"),
                                             c.pop || (c.consumed ? "consumed" : "pending")) },
        { label: "deliveries", num: true, cell: (c) => c.deliveries || "" },
      ], s.consumers) : h("p", { class: "note" }, s.kind === "timer" || s.kind === "half"
        ? "not visible to consumers yet" : "no group consumes this queue yet");
      const actions = [];
      if (s.kind === "dead_letter") {
        actions.push(h("button", { type: "button", class: "primary", "data-resend": m.offset,
          onclick: async (e) => {
            e.target.disabled = true;
            try {
              await api(`/v1/groups/${seg(s.group)}/dead-letters/resend`,
                        { method: "POST", body: { letters: [m.offset], force: !!s.resent } });
              await draw();
            } catch (err) { showError(err); e.target.disabled = false; }
          } }, s.resent ? "Resend again" : "Resend to " + (m.properties.DLQ_ORIGIN_TOPIC || "its topic")));
      }
      return h("li", { "data-kind": s.kind },
        h("div", {}, badge(s.kind), " ", KIND_TEXT[s.kind] || s.kind,
          s.group ? ` — group ${s.group}` : "", s.due ? ` — due ${when(s.due)}` : "",
          s.resent ? " (resent)" : "", " ", ...actions),
        h("dl", { class: "kv" },
          h("dt", {}, "stored"), h("dd", {}, `${when(m.store_timestamp)} in ${m.topic}, queue ${m.queue}, offset ${m.offset}`),
          h("dt", {}, "CommitLog"), h("dd", {}, `offset ${m.physical_offset}` + (m.batch_index ? `, batch member ${m.batch_index}` : "") +
                                           ` on ${m.store_host}`),
          h("dt", {}, "reconsume times"), h("dd", {}, m.reconsume_times)),
        consumers);
    });
    fill(holder, 
      h("div", { class: "cards" }, card("door", doc.door || "not recorded", "door"),
        card("topic", first.topic), card("copies", doc.steps.length)),
      h("h2", {}, "Body"), h("pre", { id: "body" }, body(first)),
      h("h2", {}, "Properties"), properties(first.properties),
      h("h2", {}, "Life"), h("ol", { class: "timeline" }, steps));
  };
  try { await draw(); } catch (err) { showError(err, holder); }
}

async function dlq(view, group) {
  if (!group) {
    const holder = h("div");
    view.append(h("h1", {}, "Dead letters"), h("p", { class: "note" }, "Pick a group:"), holder);
    const doc = await api("/v1/groups", { params: { stats: true } });
    fill(holder, table([{ label: "group", cell: (g) => link(`#/dlq/${seg(g.name)}`, g.name) }], doc.groups));
    return;
  }
  const holder = h("div", { id: "dead-letters" });
  const result = h("div", { id: "resend-result" });
  view.append(h("h1", {}, `Dead letters of ${group}`), result, holder);
  const draw = async () => {
    const doc = await api(`/v1/groups/${seg(group)}/dead-letters`, { params: { max: 200 } });
    const boxes = [];
    const rows = table([
      { label: "", cell: (d) => { const b = h("input", { type: "checkbox", value: d.offset, "data-offset": d.offset }); boxes.push(b); return b; } },
      { label: "DLQ offset", num: true, cell: (d) => d.offset },
      { label: "id", cell: (d) => link(`#/message/${seg(d.id)}`, d.id) },
      { label: "original topic", cell: (d) => d.origin_topic },
      { label: "attempts", num: true, cell: (d) => d.reconsume_times },
      { label: "stored", cell: (d) => when(d.stored_at) },
      { label: "resent", cell: (d) => (d.resent ? badge("resent", "consumed") : "") },
      { label: "body", cell: (d) => h("code", {}, body(d.message).slice(0, 80)) },
    ], doc.dead_letters, { empty: "no dead letters" });
    const resend = h("button", { type: "button", class: "primary", id: "resend", onclick: async () => {
      const letters = boxes.filter((b) => b.checked).map((b) => Number(b.value));
      if (!letters.length) { fill(result, h("p", { class: "note" }, "select letters first")); return; }
      try {
        const r = await api(`/v1/groups/${seg(group)}/dead-letters/resend`,
                            { method: "POST", body: { letters, force: true } });
        fill(result, h("p", { class: "ok", id: "resent" },
          `${r.resent.length} letter(s) resent: ` + r.resent.map((x) => `${x.topic}:${x.queue}@${x.queue_offset}`).join(", ")));
        await draw();
      } catch (err) { showError(err, result); }
    } }, "Resend selected");
    fill(holder, rows, h("p", {}, resend));
  };
  try { await draw(); } catch (err) { showError(err, holder); }
}

async function transactions(view) {
  const holder = h("div");
  view.append(h("h1", {}, "Pending transactions"), holder);
  every(async (alive) => {
    const doc = await api("/v1/transactions", { params: { max: 1000 } });
    if (!alive()) return;
    fill(holder, table([
      { label: "transaction", cell: (t) => h("code", {}, t.transaction_id) },
      { label: "message", cell: (t) => link(`#/message/${seg(t.message_id)}`, t.message_id) },
      { label: "topic", cell: (t) => t.topic },
      { label: "producer group", cell: (t) => t.group },
      { label: "prepared", cell: (t) => when(t.stored_at) },
      { label: "checks", num: true, cell: (t) => t.checks ?? 0 },
    ], doc.transactions, { empty: "no undecided transaction" }));
  });
}

async function timers(view) {
  const chart = h("div", { class: "panel", id: "chart-timers" });
  const info = h("div");
  view.append(h("h1", {}, "Timers"), info, chart);
  every(async (alive) => {
    const doc = await api("/v1/timers", { params: { hours: 48 } });
    if (!alive()) return;
    const bars = doc.hours.map((n, i) => ({ label: new Date(doc.start + i * 3600_000).toISOString().slice(11, 13) + "h", value: n }));
    fill(info, h("div", { class: "cards" },
      card("pending", formatNumber(doc.pending), "timers-pending"), card("due later than 48 h", formatNumber(doc.later)),
      card("delivered since start", formatNumber(doc.stats.delivered)),
      card("cancelled", formatNumber(doc.stats.cancelled)),
      card("lateness p99", doc.stats.lateness_p99_ms === null ? "–" : `${formatNumber(doc.stats.lateness_p99_ms)} ms`)),
      doc.approximate ? h("p", { class: "note" }, "Approximate: too many timers to read one by one.") : null);
    fill(chart, barChart(bars, { title: "Pending timers per hour (UTC)", ...WIDE }));
  });
}

async function cluster(view) {
  const holder = h("div");
  const chart = h("div", { class: "panel", id: "chart-doors" });
  view.append(h("h1", {}, "Brokers"), holder, chart);
  every(async (alive) => {
    const doc = await api("/v1/cluster");
    if (!alive()) return;
    fill(holder, table([
      { label: "cluster", cell: (b) => b.cluster }, { label: "broker", cell: (b) => b.name },
      { label: "role", cell: (b) => badge(b.role) }, { label: "address", cell: (b) => b.address },
      { label: "flush", cell: (b) => b.flush }, { label: "up since", cell: (b) => when(b.started_at) },
      { label: "CommitLog bytes", num: true, cell: (b) => formatNumber(b.commitlog.max_offset - b.commitlog.min_offset) },
      { label: "not flushed", num: true, cell: (b) => formatNumber(b.commitlog.max_offset - b.commitlog.flushed) },
    ], doc.brokers), h("h2", {}, "Doors"), table([
      { label: "door", cell: (d) => d.door },
      { label: "connections", num: true, cell: (d) => d.connections },
      { label: "accepted since start", num: true, cell: (d) => d.accepted },
    ], doc.doors, { empty: "no connection yet" }));
    fill(chart, barChart(doc.doors.map((d) => ({ label: d.door, value: d.connections })),
                                   { title: "Open connections per door", ...WIDE }));
  });
}

// ------------------------------------------------------------------ routing

const ROUTES = [
  [/^$/, overview], [/^topics$/, topics], [/^topics\/(.+)$/, topic], [/^groups$/, groups],
  [/^groups\/(.+)$/, group], [/^messages$/, messages], [/^message\/(.+)$/, life],
  [/^dlq$/, dlq], [/^dlq\/(.+)$/, dlq], [/^transactions$/, transactions], [/^timers$/, timers],
  [/^cluster$/, cluster],
];

async function route() {
  generation += 1;
  if (timer) { clearInterval(timer); timer = null; }
  fill(status, );
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, qs] = raw.split("?");
  const query = new URLSearchParams(qs || "");
  for (const a of document.querySelectorAll("#nav a")) {
    const target = a.getAttribute("href").replace(/^#\/?/, "");
    a.classList.toggle("active", target === path || (target && path.startsWith(target)));
  }
  const view = h("section", { "data-view": path.split("/")[0] || "overview" });
  fill(main, view);
  for (const [re, fn] of ROUTES) {
    const m = path.match(re);
    if (m) {
      try {
        await (fn === messages ? fn(view, query) : fn(view, ...m.slice(1).map(decodeURIComponent)));
      } catch (err) { showError(err); }
      return;
    }
  }
  view.append(h("h1", {}, "Not found"), h("p", {}, link("#/", "back to the overview")));
}

// ------------------------------------------------------------------ credentials

const dialog = document.getElementById("credentials");
function openCredentials() {
  const c = credentials();
  const form = document.getElementById("credentials-form");
  form.elements.kind.value = c.kind || "none";
  form.elements.token.value = c.token || "";
  form.elements.user.value = c.user || "";
  form.elements.password.value = "";
  dialog.showModal();
}
dialog.addEventListener("close", () => {
  if (dialog.returnValue !== "save") return;
  const f = document.getElementById("credentials-form").elements;
  setCredentials({ kind: f.kind.value, token: f.token.value, user: f.user.value, password: f.password.value });
  route();
});
document.getElementById("login").addEventListener("click", openCredentials);
document.getElementById("refresh").addEventListener("change", route);
window.addEventListener("hashchange", route);
route();

export { COLORS };
