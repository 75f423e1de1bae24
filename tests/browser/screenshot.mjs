// Takes the README's screenshot of the dashboard with live data:
//
//   node tests/browser/screenshot.mjs [OUT.png] [SECONDS]     (default docs/dashboard.png, 150 s)
//
// Starts `ringcast --demo` on a free port, ~70 SSE subscribers over four topics (some of
// which leave, and come back with Last-Event-ID, now and then), a publisher with varying
// rates, opens the dashboard in headless Chromium for SECONDS so its charts fill, tails
// `demo`, and saves the page. Everything is bounded and stopped at the end.

import http from 'node:http';
import path from 'node:path';
import fs from 'node:fs';
import { ROOT, Server, checkPrerequisites, launchChromium, sleep, waitFor } from './lib.mjs';

const out = path.resolve(process.argv[2] || path.join(ROOT, 'docs', 'dashboard.png'));
const seconds = Number(process.argv[3] || 150);
checkPrerequisites();

const srv = await Server.start('screenshot', ['--demo', '--per-ip-max-connections', '0', '--per-ip-connection-rate', '0']);
const subscribers = new Set();

/** A raw SSE subscriber that remembers the last id, so it can come back with it. */
function subscribe(topic, lastEventId) {
  const sub = { topic, lastId: lastEventId, req: null };
  const headers = lastEventId ? { 'last-event-id': lastEventId } : {};
  sub.req = http.get(`${srv.base}/events?topic=${encodeURIComponent(topic)}`, { agent: false, headers }, (res) => {
    res.setEncoding('utf8');
    res.on('data', (chunk) => {
      for (const match of chunk.matchAll(/^id: (.+)$/gm)) sub.lastId = match[1];
    });
    res.on('error', () => {});
  });
  sub.req.on('error', () => {});
  subscribers.add(sub);
  return sub;
}

const topics = { demo: 40, news: 15, 'chat/lobby': 8, 'prices/eur-usd': 5 };
for (const [topic, n] of Object.entries(topics)) for (let i = 0; i < n; i += 1) subscribe(topic);

let running = true;
const publisher = (async () => {
  const started = Date.now();
  for (let tick = 0; running && tick < seconds * 10 + 600; tick += 1) {
    const t = (Date.now() - started) / 1000;
    const batch = [];
    const news = Math.round(3 + 3 * Math.sin(t / 20));
    for (let i = 0; i < news; i += 1) batch.push({ topic: 'news', event: 'headline', data: { title: `Headline ${tick}.${i}`, at: Date.now() } });
    if (tick % 3 === 0) batch.push({ topic: 'chat/lobby', event: 'message', data: { from: ['ana', 'bo', 'chen'][tick % 3], text: `hi #${tick}` } });
    batch.push({ topic: 'prices/eur-usd', event: 'quote', data: (1.08 + 0.01 * Math.sin(t / 7)).toFixed(5) });
    await srv.publish(batch).catch(() => {});
    // Churn: every 10 s a few clients leave; some come back with Last-Event-ID.
    if (tick % 100 === 50) {
      const leaving = [...subscribers].filter((s) => s.topic === 'demo').slice(0, 4);
      for (const sub of leaving) { sub.req.destroy(); subscribers.delete(sub); }
      for (const sub of leaving.slice(0, 3)) subscribe(sub.topic, sub.lastId);
    }
    await sleep(100);
  }
})();

const browser = await launchChromium();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 }, deviceScaleFactor: 1 });
  await page.goto(srv.base + '/', { timeout: 15000 });
  await page.waitForSelector('#state[data-state="live"]', { timeout: 10000 });
  console.log(`collecting ${seconds} s of samples…`);
  await sleep(Math.max(0, seconds - 8) * 1000);
  await page.click('#topics-body tr[data-topic="demo"] button');
  await waitFor('tail events', () => page.$eval('#tail-count', (node) => Number(node.dataset.value || 0) >= 8), { timeout: 15000 });
  await sleep(1500);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out} (${Math.round(fs.statSync(out).size / 1024)} KiB)`);
} finally {
  running = false;
  await publisher;
  for (const sub of subscribers) sub.req.destroy();
  await browser.close();
  await srv.stop();
}
