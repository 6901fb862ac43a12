// The dashboard in headless Chromium against a real `sapphire run`.
//
// Run through scripts/browser-test.sh (it builds the binary, installs Chromium and the pinned
// playwright-core). Environment: SAPPHIRE_BIN (default target/debug/sapphire), CHROMIUM
// (default /usr/bin/chromium). Artifacts go to target/browser/: dashboard.png (the live page),
// dashboard-killed.png (after the kill), failure.png when a test fails, sapphire-*.log.
import { test as nodeTest, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = process.env.SAPPHIRE_BIN || path.join(ROOT, 'target', 'debug', 'sapphire');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'target', 'browser');
const TOKEN = 'browser-' + randomBytes(12).toString('hex');
const TEST_TIMEOUT = 30_000;

let dataDir;
let server = null;   // { proc, base, exited }
let runs = 0;
let browser;
let page;
const problems = []; // console errors, page errors, CSP violations
// What the browser logs on purpose: the refused wrong token, the stream down while the server restarts.
const EXPECTED_CONSOLE = /status of 403 \(Forbidden\)|WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/;

/** Starts `sapphire run`; resolves with its base URL once it prints `api: http://ADDR`. */
function startSapphire(bind) {
  runs += 1;
  const log = createWriteStream(path.join(ARTIFACTS, `sapphire-${runs}.log`));
  const proc = spawn(BIN, ['run', '--http-bind', bind, '--data-dir', dataDir, '--duration', '60s', '--quiet'], {
    env: { ...process.env, SAPPHIRE_API_TOKEN: TOKEN },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  proc.stderr.pipe(log);
  return new Promise((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => reject(new Error(`sapphire printed no API address in 30s (see ${log.path})`)), 30_000);
    proc.on('error', (e) => { clearTimeout(timer); reject(new Error(`cannot start ${BIN}: ${e.message}`)); });
    exited.then(({ code, signal }) => { clearTimeout(timer); reject(new Error(`sapphire exited early (code ${code}, signal ${signal}); see ${log.path}`)); });
    proc.stdout.on('data', (chunk) => {
      log.write(chunk);
      buffered += chunk.toString();
      const m = buffered.match(/api: (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, base: m[1], exited });
      }
    });
  });
}

async function stopSapphire() {
  if (!server) return;
  const { proc, exited } = server;
  server = null;
  if (proc.exitCode === null && proc.signalCode === null) {
    proc.kill('SIGTERM');
    const done = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 10_000))]);
    if (!done) proc.kill('SIGKILL');
  }
}

async function dashboardJson() {
  const res = await fetch(server.base + '/dashboard');
  assert.equal(res.status, 200);
  return res.json();
}

const points = () => page.locator('#equity-chart').getAttribute('data-points').then(Number);

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  dataDir = mkdtempSync(path.join(tmpdir(), 'sapphire-browser-'));
  server = await startSapphire('127.0.0.1:0');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  const context = await browser.newContext({ viewport: { width: 1600, height: 1250 }, deviceScaleFactor: 1 });
  page = await context.newPage();
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !EXPECTED_CONSOLE.test(msg.text())) {
      problems.push('console: ' + msg.text());
    }
  });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
});

/** A test that keeps a screenshot of the page when it fails. */
function test(name, options, fn) {
  nodeTest(name, options, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      if (page) await page.screenshot({ path: path.join(ARTIFACTS, 'failure.png'), fullPage: true }).catch(() => {});
      throw e;
    }
  });
}

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await stopSapphire();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test('the page loads under its CSP, goes live, and logs no errors', { timeout: TEST_TIMEOUT }, async () => {
  const response = await page.goto(server.base + '/', { waitUntil: 'load' });
  assert.equal(response.status(), 200);
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  await page.waitForSelector('#conn[data-state="live"]', { timeout: 10_000 });
  await page.waitForSelector('#risk-status[data-state="trading"]', { timeout: 10_000 });
  assert.equal(await page.title(), 'Sapphire');
  assert.deepEqual(problems, []);
});

test('the equity chart gets points, and more over time', { timeout: TEST_TIMEOUT }, async () => {
  await page.waitForFunction(() => Number(document.querySelector('#equity-chart').dataset.points) >= 2, null, { timeout: 15_000 });
  const first = await points();
  await page.waitForFunction((n) => Number(document.querySelector('#equity-chart').dataset.points) > n, first, { timeout: 10_000 });
  assert.ok((await points()) > first);
  assert.equal(await page.locator('#equity-chart canvas').count(), 1, 'uPlot drew a canvas');
});

test('fills appear in the fills table', { timeout: TEST_TIMEOUT }, async () => {
  await page.waitForSelector('#fills-body tr td.t', { timeout: 20_000 });
  const row = page.locator('#fills-body tr').first();
  const cells = await row.locator('td').allTextContents();
  assert.match(cells[0], /^\d\d:\d\d:\d\d\.\d{3}$/, 'a UTC time');
  assert.match(cells[2], /USDT$/, 'a symbol');
  assert.match(cells[3], /^(buy|sell)$/);
  assert.match(cells[5], /^\d+(\.\d+)?$/, 'a price');
  const fills = (await dashboardJson()).orders.fills;
  assert.ok(fills > 0, '/dashboard counts fills too');
});

test('positions render', { timeout: TEST_TIMEOUT }, async () => {
  await page.waitForFunction(() => [...document.querySelectorAll('#positions-body tr')].some((tr) => /USDT/.test(tr.textContent)), null, { timeout: 20_000 });
  const cells = await page.locator('#positions-body tr').first().locator('td').allTextContents();
  assert.match(cells[1], /USDT$/);
  assert.match(cells[2], /^[−]?\d+(\.\d+)?$/, 'a signed quantity');
  await page.waitForFunction(() => document.querySelectorAll('#agents-body tr .meter').length > 0);
  await page.waitForSelector('#latency-body tr td');
  // The live page, for the record, once the chart has a few seconds of history.
  await page.waitForFunction(() => Number(document.querySelector('#equity-chart').dataset.points) >= 6, null, { timeout: 15_000 });
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png'), fullPage: true });
});

test('a wrong token shows the error and changes nothing', { timeout: TEST_TIMEOUT }, async () => {
  await page.click('#kill-btn');
  await page.fill('#token-input', 'not-the-token');
  await page.click('#confirm-btn');
  const error = page.locator('#control-error');
  await error.waitFor({ state: 'visible', timeout: 5_000 });
  assert.match(await error.textContent(), /^403 Forbidden: the bearer token is not the configured API token/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('sapphire.api_token')), null, 'a refused token is not kept');
  await page.click('#cancel-btn');
  assert.equal((await dashboardJson()).risk.killed, false);
  assert.equal(await page.locator('#risk-status').getAttribute('data-state'), 'trading');
});

test('flatten asks for confirmation, then closes positions without killing', { timeout: TEST_TIMEOUT }, async () => {
  await page.click('#flatten-btn');
  await page.locator('#also-kill-row').waitFor({ state: 'visible', timeout: 5_000 });
  assert.equal(await page.locator('#confirm-btn').textContent(), 'Flatten everything');
  await page.click('#cancel-btn');
  assert.doesNotMatch(await page.locator('#risk-body').textContent(), /flatten of every agent/, 'cancelled: nothing sent');
  await page.click('#flatten-btn');
  await page.fill('#token-input', TOKEN);
  await page.click('#confirm-btn');
  await page.waitForFunction(() => /flatten accepted \(inbound seq \d+\)/.test(document.querySelector('#toast').textContent), null, { timeout: 10_000 });
  // Each pass and the end are alerts on the page.
  await page.waitForFunction(() => /flatten of every agent/.test(document.querySelector('#risk-body').textContent), null, { timeout: 10_000 });
  const d = await dashboardJson();
  assert.equal(d.risk.killed, false, 'a flatten alone does not kill');
  await page.click('#kill-btn');
  await page.locator('#also-kill-row').waitFor({ state: 'hidden', timeout: 5_000 });
  await page.click('#cancel-btn');
});

test('kill with the token stops trading on the page and in /dashboard', { timeout: TEST_TIMEOUT }, async () => {
  await page.click('#kill-btn');
  await page.fill('#token-input', TOKEN);
  await page.click('#confirm-btn');
  await page.waitForSelector('#risk-status[data-state="killed"]', { timeout: 10_000 });
  await page.waitForFunction(() => /kill switch/.test(document.querySelector('#halt-reason').textContent), null, { timeout: 5_000 });
  await page.waitForFunction(() => /kill switch engaged/.test(document.querySelector('#risk-body').textContent), null, { timeout: 5_000 });
  const d = await dashboardJson();
  assert.equal(d.risk.killed, true);
  assert.equal(d.risk.trading, false);
  assert.equal(d.risk.halt_reason, 'kill switch');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('sapphire.api_token')), TOKEN, 'kept for this tab');
  assert.equal(await page.evaluate(() => localStorage.length), 0, 'never in localStorage');
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-killed.png'), fullPage: true });
});

test('the page reconnects when the server restarts', { timeout: 45_000 }, async () => {
  const bind = new URL(server.base).host;
  const before = await page.evaluate(() => document.querySelector('#equity-chart').dataset.points);
  await stopSapphire();
  await page.waitForSelector('#conn[data-state="down"]', { timeout: 10_000 });
  // Same address, same data directory: the new process recovers from the journal.
  server = await startSapphire(bind);
  await page.waitForSelector('#conn[data-state="live"]', { timeout: 20_000 });
  // A new process: ids restart, the page starts over, and the journaled kill is still in force.
  await page.waitForFunction((n) => Number(document.querySelector('#equity-chart').dataset.points) < n, Number(before), { timeout: 10_000 });
  await page.waitForSelector('#risk-status[data-state="killed"]', { timeout: 10_000 });
  assert.equal((await dashboardJson()).risk.killed, true);
  assert.deepEqual(problems, []);
});

test('flatten with "also kill" sends the kill switch and the flatten as one command', { timeout: TEST_TIMEOUT }, async () => {
  // The restarted process still holds the journaled kill; this adds its flatten option.
  const before = (await page.locator('#risk-body').textContent()).match(/flatten of every agent/g)?.length ?? 0;
  await page.click('#flatten-btn');
  await page.locator('#also-kill-row').waitFor({ state: 'visible', timeout: 5_000 });
  await page.check('#also-kill');
  await page.fill('#token-input', TOKEN);
  await page.click('#confirm-btn');
  // POST /api/kill?flatten=true answers kill_flatten; the flatten's passes reach the risk log.
  await page.waitForFunction(() => /^kill_flatten accepted \(inbound seq \d+\)/.test(document.querySelector('#toast').textContent), null, { timeout: 10_000 });
  await page.waitForFunction((n) => (document.querySelector('#risk-body').textContent.match(/flatten of every agent/g) || []).length > n, before, { timeout: 10_000 });
  assert.equal((await dashboardJson()).risk.killed, true);
  assert.deepEqual(problems, []);
});
