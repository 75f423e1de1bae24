// Real-browser tests of ringcast: Debian's headless Chromium, driven by playwright-core.
//
//   node --test-reporter=spec run.mjs        (or: bash tests/browser/run.sh, which installs what is missing)
//
// RINGCAST_BIN names the server binary (default target/release/ringcast; nothing is built
// here). Each test starts its own server(s) on free loopback ports and stops them by PID;
// screenshots and server logs go to tests/browser/output/.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  OUT, Server, checkPrerequisites, jwt, launchChromium, openTestPage, request, selfSignedCert, sleep, waitFor, watchConsole,
} from './lib.mjs';

const JWT_SECRET = 'browser-test-secret-0123456789abcdef0123456789abcdef';
const servers = [];
let browser;

async function server(name, args, options) {
  const started = await Server.start(name, args, options);
  servers.push(started);
  return started;
}

before(async () => {
  checkPrerequisites();
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await Promise.all(servers.map((s) => s.stop()));
});

// A test page whose script opens `new EventSource('/events?topic=t')` and logs everything.
function eventSourcePage(eventNames) {
  return `<!doctype html><meta charset="utf-8"><title>EventSource test</title><script>
  window.log = [];
  window.lastId = '';
  const es = new EventSource('/events?topic=t');
  es.addEventListener('open', () => log.push({ kind: 'open', t: performance.now() }));
  es.addEventListener('error', () => log.push({ kind: 'error', t: performance.now(), readyState: es.readyState, lastId: window.lastId }));
  const record = (e) => { window.lastId = e.lastEventId; log.push({ kind: 'event', t: performance.now(), type: e.type, data: e.data, id: e.lastEventId }); };
  for (const name of ['message', 'reset', ...${JSON.stringify(eventNames)}]) es.addEventListener(name, record);
  </script>`;
}

const pageLog = (page) => page.evaluate(() => window.log);
const eventsOf = (log) => log.filter((entry) => entry.kind === 'event');
const count = (log, kind) => log.filter((entry) => entry.kind === kind).length;

/** Checks that `received` is exactly `expected` (ids, types, data), in order, each once. */
function assertExactlyOnce(received, expectedIds) {
  const ids = received.map((e) => e.id);
  const duplicates = ids.filter((id, i) => ids.indexOf(id) !== i);
  assert.deepEqual(duplicates, [], `events delivered more than once: ${duplicates.slice(0, 10).join(', ')}`);
  const missing = expectedIds.filter((id) => !ids.includes(id));
  assert.deepEqual(missing, [], `events never delivered: ${missing.slice(0, 10).join(', ')}`);
  assert.deepEqual(ids, expectedIds, 'events out of order');
}

// ---------------------------------------------------------------------------------------
test('dashboard: loads without console errors, its numbers move with traffic, tail and publish work, it reconnects after a drop', { timeout: 90000 }, async () => {
  const srv = await server('dashboard', ['--test-hooks', '--retry-ms', '700']);
  const context = await browser.newContext({ viewport: { width: 1280, height: 1100 } });
  try {
    const page = await context.newPage();
    const problems = watchConsole(page);
    const response = await page.goto(srv.base + '/', { timeout: 15000 });
    assert.equal(response.status(), 200);
    assert.match(response.headers()['content-security-policy'] ?? '', /default-src 'self'/, 'the dashboard is served with its CSP');
    await page.waitForSelector('#state[data-state="live"]', { timeout: 10000 });
    const value = (id) => page.$eval(id, (node) => Number(node.dataset.value));

    // Publishing moves the numbers: events total, the topics table.
    const eventsBefore = await value('#v-events-total');
    const ids = await srv.publish(Array.from({ length: 25 }, (_, i) => ({ topic: 'browser/dash', data: `event ${i}` })));
    assert.equal(ids.length, 25);
    await waitFor('the events total to count the 25 published events', async () => (await value('#v-events-total')) >= eventsBefore + 25);
    await waitFor('topic browser/dash in the topics table with 25 published', () =>
      page.$eval('#topics-body', (body) => [...body.querySelectorAll('tr')].some((row) => row.dataset.topic === 'browser/dash' && row.cells[2].textContent === '25')));
    await waitFor('the events/s chart to have a line', () => page.$eval('#chart-events polyline', (line) => (line.getAttribute('points') || '').split(' ').length >= 2));
    const reasons = await page.$$eval('#disconnects-body tr', (rows) => rows.map((row) => row.dataset.reason));
    assert.deepEqual([...reasons].sort(), ['client_closed', 'error', 'lapped', 'shutdown', 'token_expired', 'write_timeout'],
      'one row per production disconnect reason (no test-only reason)');

    // The tail panel: pick a topic (from the topics table), see its events arrive.
    await page.click('#topics-body tr[data-topic="browser/dash"] button');
    await waitFor('the tail to be watching browser/dash', () => page.$eval('#tail-status', (node) => node.textContent === 'watching browser/dash'));
    const deliveriesBefore = await value('#v-deliveries-total');
    await srv.publish({ topic: 'browser/dash', event: 'greeting', data: 'hello\nfrom node ✓' });
    await waitFor('the tail to show the event', () => page.$eval('#tail-list', (list) =>
      list.querySelector('li')?.dataset.event === 'greeting' && list.querySelector('li pre').textContent === 'hello\nfrom node ✓'));
    await waitFor('two streams (stats + tail) in the clients card', async () => (await value('#v-streams')) >= 2);
    await waitFor('the deliveries total to move', async () => (await value('#v-deliveries-total')) > deliveriesBefore, { timeout: 8000 });

    // The publish form (anonymous publishing is on: no authorization configured).
    assert.equal(await page.$eval('#pub-submit', (button) => button.disabled), false, 'publish form enabled');
    assert.equal(await page.inputValue('#pub-topic'), 'browser/dash', 'the publish form follows the watched topic');
    await page.fill('#pub-event', 'from-form');
    await page.fill('#pub-data', 'published with the form');
    await page.click('#pub-submit');
    await waitFor('the form to report the new id', () => page.$eval('#pub-result', (node) => node.textContent.startsWith('published: id ')));
    await waitFor('the tail to show the form event', () => page.$eval('#tail-list li', (item) =>
      item.dataset.event === 'from-form' && item.querySelector('pre').textContent === 'published with the form'));
    // The server drops every stream: the dashboard shows it, reconnects by itself (stats
    // and tail), and counts the drops and the exact resumes.
    const resumesBefore = await value('#v-resumes');
    await srv.kick();
    await page.waitForSelector('#state[data-state="reconnecting"]', { timeout: 5000 });
    await page.waitForSelector('#state[data-state="live"]', { timeout: 10000 });
    await waitFor('the tail to watch again', () => page.$eval('#tail-status', (node) => node.textContent === 'watching browser/dash'));
    await srv.publish({ topic: 'browser/dash', event: 'after-drop', data: 'after the drop' });
    await waitFor('the tail to show the event after the drop', () => page.$eval('#tail-list li', (item) => item.dataset.event === 'after-drop'));
    // The drops are the test hook's (counted in /metrics only once it fires; the dashboard
    // lists production reasons).
    await waitFor('2 test-hook disconnects', async () => (await srv.metrics())['ringcast_disconnects_total{reason="test_hook"}'] === 2);
    await waitFor('2 more exact resumes (stats and tail)', async () => (await value('#v-resumes')) === resumesBefore + 2);

    await sleep(1200); // one more snapshot, so the charts and tables show the traffic
    await page.screenshot({ path: path.join(OUT, 'dashboard.png'), fullPage: true });
    assert.deepEqual(problems, [], 'no console errors');

    // A refused publish is reported in the form (the browser logs the 403 itself).
    await page.fill('#pub-topic', '$sys/stats');
    await page.click('#pub-submit');
    await waitFor('the form to show the refusal of a $sys/ topic', () => page.$eval('#pub-result', (node) => /^HTTP 403: topic `\$sys\/stats` is reserved/.test(node.textContent)));
    assert.deepEqual(problems.filter((p) => !/status of 403 \(Forbidden\).*\/publish/.test(p)), [], 'no other console errors');
  } finally {
    await context.close();
  }
});

test('dashboard: respects authorization (refused without --public-topics; live but no anonymous publish with it)', { timeout: 60000 }, async () => {
  const closed = await server('dashboard-auth', ['--jwt-secret', JWT_SECRET]);
  const open = await server('dashboard-public', ['--jwt-secret', JWT_SECRET, '--public-topics', '$sys/*']);
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    const page = await context.newPage();
    await page.goto(closed.base + '/', { timeout: 15000 });
    await page.waitForSelector('#state[data-state="refused"]', { timeout: 10000 });
    const notice = await page.textContent('#notice');
    assert.match(notice, /Not authorized to read \$sys\/stats \(HTTP 401/, notice);
    assert.match(notice, /--public-topics '\$sys\/\*'/);
    assert.equal(await page.$eval('#pub-submit', (button) => button.disabled), true);
    await page.screenshot({ path: path.join(OUT, 'dashboard-refused.png') });

    const problems = watchConsole(page);
    await page.goto(open.base + '/', { timeout: 15000 });
    await page.waitForSelector('#state[data-state="live"]', { timeout: 10000 });
    await waitFor('the publish form to be disabled with an explanation', () =>
      page.$eval('#pub-note', (node) => node.textContent.startsWith('Disabled: this server needs a token to publish')));
    assert.equal(await page.$eval('#pub-submit', (button) => button.disabled), true);
    // A topic that is not public: the tail says why it is refused.
    await page.fill('#tail-topic', 'private/room');
    await page.click('#tail-start');
    await waitFor('the tail to report the refusal', () => page.$eval('#tail-status', (node) => /^private\/room: refused, HTTP 401/.test(node.textContent)));
    await page.screenshot({ path: path.join(OUT, 'dashboard-public-stats.png') });
    const unexpected = problems.filter((p) => !/status of 401/.test(p)); // the refused tail logs a 401 by design
    assert.deepEqual(unexpected, [], 'no console errors besides the refused tail');
  } finally {
    await context.close();
  }
});

// ---------------------------------------------------------------------------------------
const CASES = [
  { data: 'plain' },
  { data: 'line one\nline two\n\nline four, after an empty line' },
  { data: 'ends with a line break\n' },
  { data: '\nstarts with a line break' },
  { data: '' },
  { data: '  two leading spaces, trailing ones  ' },
  { data: 'Unicode: héllo wörld — ça va? 日本語テキスト 🎉 👩‍👩‍👧‍👦 مرحبا עברית e\u0301 \u2028 \u2029 tab\there' },
  { event: 'greeting', data: 'a custom event name' },
  { event: 'user.updated', data: '{"id":42,"name":"Zoë"}' },
  { event: 'ünïcödé-名前', data: 'a Unicode event name' },
  { event: 'message', data: 'an explicit `message`' },
  { data: 'id: 999\nevent: evil\nretry: 1\n: not a comment\ndata: nested\n\n' },
  { data: ':starts with a colon' },
  { data: 'x'.repeat(30000) + '\n' + 'y'.repeat(30000) },
];
const CASE_NAMES = ['greeting', 'user.updated', 'ünïcödé-名前'];

test('EventSource: multi-line, Unicode, empty data and custom event names arrive exactly as published', { timeout: 60000 }, async () => {
  const srv = await server('eventsource-data');
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await openTestPage(page, srv.base + '/__test/eventsource', eventSourcePage(CASE_NAMES));
    await waitFor('the EventSource to open', async () => count(await pageLog(page), 'open') === 1);
    const expected = [];
    for (const event of CASES) {
      const [id] = await srv.publish({ topic: 't', ...event });
      expected.push({ id, type: event.event || 'message', data: event.data });
    }
    // A JSON value as data, and an NDJSON batch (consecutive ids).
    const [jsonId] = await srv.publish({ topic: 't', event: 'greeting', data: { nested: ['value', 1, true, null], 'ключ': 'значение' } });
    const batch = [{ topic: 't', data: 'batch 1' }, { topic: 't', event: 'greeting', data: 'batch 2\nsecond line' }, { topic: 't', data: '' }];
    const batchIds = await srv.publish(batch);
    const total = expected.length + 1 + batch.length;
    const log = await waitFor(`${total} events in the page`, async () => {
      const entries = await pageLog(page);
      return eventsOf(entries).length >= total && entries;
    });
    const received = eventsOf(log).map(({ id, type, data }) => ({ id, type, data }));
    assert.deepEqual(received.slice(0, expected.length), expected);
    const json = received[expected.length];
    assert.equal(json.id, jsonId);
    assert.equal(json.type, 'greeting');
    assert.deepEqual(JSON.parse(json.data), { nested: ['value', 1, true, null], 'ключ': 'значение' });
    assert.deepEqual(received.slice(expected.length + 1), batch.map((e, i) => ({ id: batchIds[i], type: e.event || 'message', data: e.data })));
    assert.equal(received.length, total, 'nothing extra');
    assert.equal(count(log, 'error'), 0, 'no error events');
  } finally {
    await context.close();
  }
});

test('EventSource: dropped mid-stream, the browser reconnects after retry: with Last-Event-ID and gets every event exactly once, in order', { timeout: 90000 }, async () => {
  const RETRY_MS = 1000;
  const KICKS = 3;
  const srv = await server('eventsource-resume', ['--test-hooks', '--retry-ms', String(RETRY_MS)]);
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    // The headers Chromium really sent (CDP's ExtraInfo event: what went on the wire).
    // (The two events of a request come in either order: joined by request id at the end.)
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const streamRequests = [];
    const sentHeaders = new Map();
    cdp.on('Network.requestWillBeSent', ({ requestId, request }) => { if (request.url.includes('/events?topic=t')) streamRequests.push(requestId); });
    cdp.on('Network.requestWillBeSentExtraInfo', ({ requestId, headers }) => {
      const name = Object.keys(headers).find((key) => key.toLowerCase() === 'last-event-id');
      sentHeaders.set(requestId, name ? headers[name] : null);
    });
    await openTestPage(page, srv.base + '/__test/resume', eventSourcePage([]));
    await waitFor('the EventSource to open', async () => count(await pageLog(page), 'open') === 1);

    // A publisher runs all along (bounded: at most 3000 events or 40 s) while the server
    // drops the stream three times.
    const published = [];
    const gaps = []; // events published while the browser was away, per drop
    let stop = false;
    const publisher = (async () => {
      const deadline = Date.now() + 40000;
      for (let i = 0; !stop && i < 3000 && Date.now() < deadline; i += 1) {
        published.push(...await srv.publish({ topic: 't', data: `seq ${i}\nsecond line ${i}` }));
        await sleep(5);
      }
    })();
    try {
      for (let kick = 1; kick <= KICKS; kick += 1) {
        const before = eventsOf(await pageLog(page)).length;
        await waitFor('events flowing before the drop', async () => eventsOf(await pageLog(page)).length >= before + 20);
        await srv.kick();
        const publishedAtDrop = published.length;
        await waitFor(`reconnection ${kick}`, async () => count(await pageLog(page), 'open') === kick + 1, { timeout: RETRY_MS + 10000 });
        gaps.push(published.length - publishedAtDrop);
      }
      const resumedAt = eventsOf(await pageLog(page)).length;
      await waitFor('events flowing after the last reconnection', async () => eventsOf(await pageLog(page)).length >= resumedAt + 20);
    } finally {
      stop = true;
      await publisher;
    }
    const log = await waitFor(`all ${published.length} published events in the page`, async () => {
      const entries = await pageLog(page);
      return eventsOf(entries).length >= published.length && entries;
    });
    const received = eventsOf(log);
    assert.ok(gaps.every((n) => n >= 10), `events were published during every disconnection: ${gaps}`);
    assertExactlyOnce(received, published);
    received.forEach((event, i) => assert.equal(event.data, `seq ${i}\nsecond line ${i}`));

    // Each drop: an `error` with readyState CONNECTING (the browser retries by itself), then
    // an `open` after the retry: delay, on a request carrying Last-Event-ID = the last id seen.
    const errors = log.filter((e) => e.kind === 'error');
    const opens = log.filter((e) => e.kind === 'open');
    assert.equal(errors.length, KICKS, 'one error event per drop');
    errors.forEach((error, i) => {
      assert.equal(error.readyState, 0, 'EventSource.CONNECTING: the browser reconnects on its own');
      const delay = opens[i + 1].t - error.t;
      assert.ok(delay >= RETRY_MS * 0.9 && delay < RETRY_MS + 5000, `reconnection ${i + 1} after ${delay.toFixed(0)} ms, expected about ${RETRY_MS} ms`);
    });
    const reconnectHeaders = await waitFor('the request headers of every reconnection', () =>
      streamRequests.length === KICKS + 1 && streamRequests.every((id) => sentHeaders.has(id)) && streamRequests.map((id) => sentHeaders.get(id)),
    { timeout: 5000 }).catch((error) => {
      throw new Error(`${error.message}; requests ${JSON.stringify(streamRequests)}, headers ${JSON.stringify([...sentHeaders])}`);
    });
    assert.deepEqual(reconnectHeaders, [null, ...errors.map((e) => e.lastId)], 'Last-Event-ID = the last id the page had');
    const metrics = await srv.metrics();
    assert.equal(metrics.ringcast_resumes_exact_total, KICKS, 'the server resumed exactly each time');
    assert.equal(metrics.ringcast_resumes_reset_total, 0);
    assert.equal(metrics['ringcast_disconnects_total{reason="test_hook"}'], KICKS);
    console.log(`# ${published.length} events, ${gaps.join('/')} of them published while disconnected, ${KICKS} drops, reconnection delays ${errors.map((e, i) => (opens[i + 1].t - e.t).toFixed(0)).join(', ')} ms`);
  } finally {
    await context.close();
  }
});

test('EventSource: a Last-Event-ID the ring no longer holds yields the documented reset event, then live events', { timeout: 60000 }, async () => {
  const RETRY_MS = 1000;
  const srv = await server('eventsource-reset', ['--test-hooks', '--retry-ms', String(RETRY_MS), '--ring-capacity', '16']);
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await openTestPage(page, srv.base + '/__test/reset', eventSourcePage([]));
    await waitFor('the EventSource to open', async () => count(await pageLog(page), 'open') === 1);
    const first = await srv.publish([1, 2, 3].map((i) => ({ topic: 't', data: `before ${i}` })));
    await waitFor('the first 3 events', async () => eventsOf(await pageLog(page)).length === 3);

    // Drop the stream; while the browser waits out retry:, publish more than the ring holds.
    await srv.kick();
    await waitFor('the drop', async () => count(await pageLog(page), 'error') === 1);
    const lost = await srv.publish(Array.from({ length: 40 }, (_, i) => ({ topic: 't', data: `missed ${i}` })));
    await waitFor('the reconnection', async () => count(await pageLog(page), 'open') === 2, { timeout: RETRY_MS + 10000 });
    const reset = await waitFor('the reset event', async () => eventsOf(await pageLog(page)).find((e) => e.type === 'reset'));
    assert.deepEqual(JSON.parse(reset.data), { reason: 'too-old', lastEventId: first[2] });
    const [epoch, seq] = reset.id.split('-').map(Number);
    assert.equal(`${epoch}`, first[0].split('-')[0], 'same epoch');
    assert.ok(seq >= Number(lost.at(-1).split('-')[1]), `the reset's id ${reset.id} is the current position (≥ ${lost.at(-1)})`);

    // Then live: new events arrive, none of the lost ones.
    const live = await srv.publish([1, 2].map((i) => ({ topic: 't', data: `after ${i}` })));
    const log = await waitFor('the live events after the reset', async () => {
      const entries = await pageLog(page);
      return eventsOf(entries).length >= 6 && entries;
    });
    const received = eventsOf(log);
    assert.deepEqual(received.map((e) => e.type === 'reset' ? 'reset' : e.id), [...first, 'reset', ...live]);
    assert.deepEqual(received.map((e) => e.data).filter((d) => d.startsWith('missed')), [], 'no lost event is replayed');

    // The reset's id is a valid position: a later drop resumes exactly from it.
    await srv.kick();
    await waitFor('the second drop', async () => count(await pageLog(page), 'error') === 2);
    const later = await srv.publish({ topic: 't', data: 'after the second drop' });
    await waitFor('the second reconnection and the event', async () => eventsOf(await pageLog(page)).at(-1)?.id === later[0], { timeout: RETRY_MS + 10000 });
    const metrics = await srv.metrics();
    assert.equal(metrics.ringcast_resumes_reset_total, 1);
    assert.equal(metrics.ringcast_resumes_exact_total, 1);
  } finally {
    await context.close();
  }
});

// ---------------------------------------------------------------------------------------
test('HTTP/2 over TLS: 20 EventSource streams in one page share one connection, also after a drop', { timeout: 90000 }, async () => {
  const STREAMS = 20;
  const tls = selfSignedCert(path.join(OUT, 'tls'));
  const srv = await server('h2', ['--test-hooks', '--retry-ms', '500'], { tls });
  const h2browser = await launchChromium(['--ignore-certificate-errors']);
  try {
    const context = await h2browser.newContext();
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const responses = [];
    cdp.on('Network.responseReceived', ({ response }) => {
      if (response.url.includes('/events?')) responses.push({ url: response.url, status: response.status, protocol: response.protocol, connectionId: response.connectionId });
    });
    await openTestPage(page, srv.base + '/__test/h2', `<!doctype html><meta charset="utf-8"><script>
      window.opened = 0; window.received = {};
      window.streams = Array.from({ length: ${STREAMS} }, (_, i) => {
        const es = new EventSource('/events?topic=h2-' + i);
        es.onopen = () => { window.opened += 1; };
        es.onmessage = (e) => { window.received[i] = e.data; };
        return es;
      });
    </script>`);
    await waitFor(`all ${STREAMS} streams open`, async () => (await page.evaluate(() => window.opened)) === STREAMS, { timeout: 15000 });

    // Every stream is live at once (HTTP/1.1 would allow 6 per host): one event each.
    await srv.publish(Array.from({ length: STREAMS }, (_, i) => ({ topic: `h2-${i}`, data: `to stream ${i}` })));
    await waitFor('an event on every stream', async () => Object.keys(await page.evaluate(() => window.received)).length === STREAMS);
    const received = await page.evaluate(() => window.received);
    for (let i = 0; i < STREAMS; i += 1) assert.equal(received[i], `to stream ${i}`);

    // The browser's view: every stream is an h2 response on the same connection.
    assert.equal(responses.length, STREAMS);
    assert.deepEqual([...new Set(responses.map((r) => r.protocol))], ['h2'], 'every stream over HTTP/2');
    assert.deepEqual([...new Set(responses.map((r) => r.status))], [200]);
    assert.equal(new Set(responses.map((r) => r.connectionId)).size, 1, `one connection id for all streams: ${JSON.stringify(responses.map((r) => r.connectionId))}`);

    // The server's view, asked from the page (so over that same connection): 20 streams, 1 connection.
    const view = await waitFor('the server to count 20 streams on 1 connection', async () => {
      const seen = await page.evaluate(async () => {
        const text = await (await fetch('/metrics', { cache: 'no-store' })).text();
        const metric = (name) => Number(text.match(new RegExp(`^${name} (\\d+)$`, 'm'))?.[1]);
        const entry = performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/metrics')).at(-1);
        return { streams: metric('ringcast_streams'), connections: metric('ringcast_connections'), protocol: entry?.nextHopProtocol };
      });
      return seen.streams === STREAMS && seen.connections === 1 && seen;
    }, { timeout: 10000, interval: 250 });
    assert.equal(view.protocol, 'h2', 'the page fetch went over h2');

    // Dropped by the server, the 20 streams come back on that same connection.
    await srv.kick();
    await waitFor(`all ${STREAMS} streams open again`, async () => (await page.evaluate(() => window.opened)) === 2 * STREAMS, { timeout: 15000 });
    assert.equal(new Set(responses.map((r) => r.connectionId)).size, 1, 'the reconnections reuse the connection');
    assert.equal(responses.length, 2 * STREAMS);
    console.log(`# ${STREAMS} EventSource streams, protocol ${responses[0].protocol}, connection id ${responses[0].connectionId}; server: ${JSON.stringify(view)}`);
    await context.close();
  } finally {
    await h2browser.close().catch(() => {});
  }
});

// ---------------------------------------------------------------------------------------
test('Mercure: EventSource subscribers get publisher ids, space-led multi-line data, a private update by cookie, and resume with Last-Event-ID', { timeout: 90000 }, async () => {
  const PUB = 'browser-mercure-publisher-key';
  const SUB = 'browser-mercure-subscriber-key';
  const RETRY_MS = 700;
  const srv = await server('mercure', [
    '--test-hooks', '--retry-ms', String(RETRY_MS), '--mercure-anonymous',
    '--mercure-publisher-jwt-key', PUB, '--mercure-subscriber-jwt-key', SUB,
  ]);
  const publisherToken = jwt(PUB, { mercure: { publish: ['*'] } });
  const publish = async (fields) => {
    const body = new URLSearchParams(fields).toString();
    const response = await request(srv.base + '/.well-known/mercure', {
      method: 'POST', body,
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Bearer ${publisherToken}` },
    });
    assert.equal(response.status, 200, response.text);
    assert.match(response.headers['content-type'], /^text\/plain/);
    return response.text;
  };
  const page = () => `<!doctype html><meta charset="utf-8"><script>
    window.log = [];
    const url = new URL('/.well-known/mercure', location.origin);
    url.searchParams.append('topic', 'https://example.com/books/{id}');
    url.searchParams.append('topic', 'https://example.com/users/42/{+rest}');
    const es = new EventSource(url);
    es.onopen = () => log.push({ kind: 'open' });
    es.onerror = () => log.push({ kind: 'error', readyState: es.readyState });
    es.onmessage = (e) => log.push({ kind: 'event', id: e.lastEventId, data: e.data });
  </script>`;
  const privateClaim = jwt(SUB, { mercure: { subscribe: ['https://example.com/users/42/{+rest}'] } });
  const withCookie = await browser.newContext();
  await withCookie.addCookies([{ name: 'mercureAuthorization', value: privateClaim, url: srv.base, httpOnly: true, sameSite: 'Strict' }]);
  const anonymous = await browser.newContext();
  try {
    const authorized = await withCookie.newPage();
    const cdp = await withCookie.newCDPSession(authorized);
    await cdp.send('Network.enable');
    const streams = [];
    const sent = new Map();
    const answered = new Map();
    cdp.on('Network.requestWillBeSent', ({ requestId, request: r }) => { if (r.url.includes('/.well-known/mercure?')) streams.push(requestId); });
    cdp.on('Network.requestWillBeSentExtraInfo', ({ requestId, headers }) => sent.set(requestId, headers));
    cdp.on('Network.responseReceivedExtraInfo', ({ requestId, headers }) => answered.set(requestId, headers));
    await openTestPage(authorized, srv.base + '/__test/mercure', page());
    const guest = await anonymous.newPage();
    await openTestPage(guest, srv.base + '/__test/mercure-guest', page());
    const logOf = (p) => p.evaluate(() => window.log);
    await waitFor('both EventSources open', async () => count(await logOf(authorized), 'open') === 1 && count(await logOf(guest), 'open') === 1);

    const spaced = ' one leading space\n  two leading spaces\n\nafter an empty line';
    const ids = [];
    ids.push(await publish({ topic: 'https://example.com/books/1', data: spaced, id: 'https://example.com/books/1/v1' }));
    ids.push(await publish([['topic', 'https://example.com/books/2'], ['topic', 'https://example.com/users/42/books/2'], ['data', 'private to user 42'], ['private', 'on']]));
    ids.push(await publish({ topic: 'https://example.com/books/3', data: 'public again' }));
    assert.equal(ids[0], 'https://example.com/books/1/v1', 'the publisher id is the id');
    assert.match(ids[1], /^urn:uuid:[0-9a-f-]{36}$/, 'a generated id is a urn:uuid IRI');
    const seen = (p, n) => waitFor(`${n} events`, async () => { const events = eventsOf(await logOf(p)); return events.length >= n && events; });
    const got = await seen(authorized, 3);
    assert.deepEqual(got.map(({ id, data }) => ({ id, data })), [
      { id: ids[0], data: spaced }, { id: ids[1], data: 'private to user 42' }, { id: ids[2], data: 'public again' },
    ], 'the cookie-authorized page gets the private update; data lines keep their leading spaces');
    const guestGot = await seen(guest, 2);
    assert.deepEqual(guestGot.map((e) => e.id), [ids[0], ids[2]]);

    // Dropped: the browser reconnects with Last-Event-ID and gets what it missed, once.
    await srv.kick();
    await waitFor('the drop', async () => count(await logOf(authorized), 'error') === 1);
    const missed = await publish({ topic: 'https://example.com/books/4', data: 'while away', id: 'book-4' });
    await waitFor('the reconnection', async () => count(await logOf(authorized), 'open') === 2, { timeout: RETRY_MS + 10000 });
    const after = await seen(authorized, 4);
    assert.deepEqual(after.map((e) => e.id), [...ids, missed], 'every update exactly once, in order');
    const lastEventIdOf = (headers) => Object.entries(headers ?? {}).find(([k]) => k.toLowerCase() === 'last-event-id')?.[1];
    const [, reconnect] = await waitFor('the reconnection request and its answer', () =>
      streams.length === 2 && sent.has(streams[1]) && answered.has(streams[1]) && streams, { timeout: 5000 });
    assert.equal(lastEventIdOf(sent.get(reconnect)), ids[2], 'Chromium sent Last-Event-ID');
    assert.equal(lastEventIdOf(answered.get(reconnect)), ids[2], 'the hub answered with the Last-Event-ID header');
    const metrics = await srv.metrics();
    assert.equal(metrics['ringcast_disconnects_total{reason="test_hook"}'], 2);
    console.log(`# Mercure ids ${ids.join(', ')}, ${missed}; reconnection sent Last-Event-ID ${lastEventIdOf(sent.get(reconnect))}`);
  } finally {
    await withCookie.close();
    await anonymous.close();
  }
});
