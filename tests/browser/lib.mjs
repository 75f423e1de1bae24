// Helpers for the browser tests: ringcast server processes on free loopback ports, plain
// HTTP(S) requests from Node, waiting with deadlines, and Chromium from Debian's package.
// Every process started here is tracked by PID and killed at exit, also on failure.

import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..');
export const OUT = path.join(HERE, 'output');
export const BIN = path.resolve(ROOT, process.env.RINGCAST_BIN || 'target/release/ringcast');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** The flags that make Chromium work on a machine with a closed network (see README). */
export const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

fs.mkdirSync(OUT, { recursive: true });

const children = new Set();
function killAll(signal) {
  for (const child of children) {
    try { process.kill(child.pid, signal); } catch { /* already gone */ }
  }
}
process.on('exit', () => killAll('SIGKILL'));
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => { killAll('SIGKILL'); process.exit(130); });
}

export function checkPrerequisites() {
  const problems = [];
  try { fs.accessSync(BIN, fs.constants.X_OK); } catch {
    problems.push(`no server binary at ${BIN}: build it with \`cargo build --release\` or set RINGCAST_BIN`);
  }
  try { fs.accessSync(CHROMIUM, fs.constants.X_OK); } catch {
    problems.push(`no Chromium at ${CHROMIUM}: run tests/browser/run.sh (apt-get install chromium) or set CHROMIUM_PATH`);
  }
  if (problems.length) throw new Error(problems.join('\n'));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until it returns a truthy value (returned), or fails after `timeout` ms. */
export async function waitFor(what, probe, { timeout = 10000, interval = 50 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) {
      const seen = last === undefined ? '' : `; last value: ${JSON.stringify(last)?.slice(0, 300)}`;
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${seen}`);
    }
    await sleep(interval);
  }
}

/** A free TCP port on 127.0.0.1 (the kernel picks it; the server binds it right after). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** One HTTP(S) request on its own connection (closed after), so that it never lingers in
 * a pool and counts in `ringcast_connections` only while it runs. */
export function request(url, { method = 'GET', headers = {}, body, ca, timeout = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const client = target.protocol === 'https:' ? https : http;
    const req = client.request(target, { method, headers: { connection: 'close', ...headers }, agent: false, ca, timeout }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeout} ms: ${method} ${url}`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/** An HS256 JSON Web Token of `claims`, signed with `secret`. */
export function jwt(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${unsigned}.${crypto.createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

/** Parses Prometheus text into `{ 'name{labels}': value }`. */
export function parseMetrics(text) {
  const values = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    values[line.slice(0, space)] = Number(line.slice(space + 1));
  }
  return values;
}

/** A ringcast server process on a free loopback port. */
export class Server {
  static async start(name, args = [], { tls } = {}) {
    const port = await freePort();
    const scheme = tls ? 'https' : 'http';
    const logPath = path.join(OUT, `server-${name}.log`);
    const log = fs.openSync(logPath, 'w');
    const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('RINGCAST_')));
    env.NO_COLOR = '1';
    const fullArgs = ['--listen', `127.0.0.1:${port}`, '--shutdown-grace', '1', ...args];
    if (tls) fullArgs.push('--tls-cert', tls.cert, '--tls-key', tls.key);
    fs.writeSync(log, `$ ${BIN} ${fullArgs.join(' ')}\n`);
    const child = spawn(BIN, fullArgs, { stdio: ['ignore', log, log], env });
    fs.closeSync(log);
    children.add(child);
    const server = new Server(name, child, `${scheme}://127.0.0.1:${port}`, logPath, tls && fs.readFileSync(tls.cert));
    child.on('exit', (code, signal) => { server.exited = { code, signal }; children.delete(child); });
    try {
      await waitFor(`${name} server to answer /health`, async () => {
        if (server.exited) throw new Error(`server ${name} exited at start (${JSON.stringify(server.exited)}):\n${server.logTail()}`);
        try { return (await server.get('/health', { timeout: 1000 })).status === 200; } catch { return false; }
      }, { timeout: 15000, interval: 100 });
    } catch (error) {
      await server.stop();
      throw error;
    }
    return server;
  }

  constructor(name, child, base, logPath, ca) {
    Object.assign(this, { name, child, pid: child.pid, base, logPath, ca, exited: null });
  }

  get(pathname, options = {}) { return request(this.base + pathname, { ca: this.ca, ...options }); }

  /** POST /publish with a JSON body (or NDJSON lines when given an array); returns the ids. */
  async publish(events) {
    const batch = Array.isArray(events);
    const body = batch ? events.map((e) => JSON.stringify(e)).join('\n') + '\n' : JSON.stringify(events);
    const response = await request(this.base + '/publish', {
      method: 'POST', ca: this.ca, body,
      headers: { 'content-type': batch ? 'application/x-ndjson' : 'application/json' },
    });
    if (response.status !== 200) throw new Error(`publish answered ${response.status}: ${response.text}`);
    return JSON.parse(response.text).ids;
  }

  async kick() {
    const response = await request(this.base + '/debug/disconnect', { method: 'POST', ca: this.ca });
    if (response.status !== 200) throw new Error(`/debug/disconnect answered ${response.status}: ${response.text} (is --test-hooks on?)`);
  }

  async metrics() { return parseMetrics((await this.get('/metrics')).text); }

  logTail(lines = 30) {
    try { return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n'); } catch { return ''; }
  }

  /** SIGTERM, then SIGKILL if it has not exited within 5 s. */
  async stop() {
    if (this.exited) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    try { process.kill(this.pid, 'SIGTERM'); } catch { return; }
    const timer = setTimeout(() => { try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ } }, 5000);
    await exited;
    clearTimeout(timer);
  }
}

/** Debian's Chromium, headless, with a fresh profile (Playwright makes a new temporary
 * --user-data-dir for every launch and deletes it at close). */
export function launchChromium(extraArgs = []) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_FLAGS, ...extraArgs], timeout: 30000 });
}

/** Records console errors and uncaught exceptions of a page. */
export function watchConsole(page) {
  const problems = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console.error: ${message.text()} (${message.location().url || 'page'})`);
  });
  page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
  return problems;
}

/** A self-signed certificate for 127.0.0.1 and localhost, valid one day. */
export function selfSignedCert(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-days', '1', '-keyout', key, '-out', cert,
  ], { stdio: 'pipe', timeout: 30000 });
  return { cert, key };
}

/** Serves `html` at `url` in `page` (the document never reaches the server, but its origin
 * is the server's, so relative URLs such as `/events?topic=t` go to the server). */
export async function openTestPage(page, url, html) {
  const handler = (route) => route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: html });
  await page.route(url, handler);
  await page.goto(url, { timeout: 15000 });
  await page.unroute(url, handler); // nothing else is intercepted: the streams go straight to the server
}
