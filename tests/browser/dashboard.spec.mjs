// End-to-end test of volley's dashboard in Debian's headless Chromium, driven by
// tests/dashboard_browser.rs (which starts the sink and volley and submits mail).
//
//   node tests/browser/dashboard.spec.mjs http://127.0.0.1:PORT API_KEY target/dashboard.png
//
// Protocol with the driver: once the page shows its first counters, this script prints
// `ready DELIVERED` on stdout; the driver then submits more mail, and the script waits for
// the delivered counter to move past that value. It exits 0 when every check passed, 1
// otherwise. Beside the screenshot it saves `-job.png` (a job's page) and `-narrow.png`
// (the overview in a phone-sized window).

import { chromium } from 'playwright-core';

const [base, key, screenshot] = process.argv.slice(2);
if (!base || !key || !screenshot) {
  console.error('usage: node dashboard.spec.mjs BASE_URL API_KEY SCREENSHOT.png');
  process.exit(2);
}
const sibling = (suffix) => screenshot.replace(/(\.png)?$/, `${suffix}.png`);
const TIMEOUT = 30_000;

const problems = [];
const log = (...args) => console.error('[browser]', ...args);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function number(page, selector) {
  const text = (await page.locator(selector).textContent()) || '';
  return Number(text.replace(/[^0-9.]/g, ''));
}

// Waits until `selector`'s text parses as a number above `min`.
async function waitAbove(page, selector, min) {
  await page.waitForFunction(
    ([sel, floor]) => {
      const node = document.querySelector(sel);
      if (!node) return false;
      const value = Number(node.textContent.replace(/[^0-9.]/g, ''));
      return node.textContent.trim() !== '–' && value > floor;
    },
    [selector, min],
    { timeout: TIMEOUT },
  );
}

async function run() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Playwright gives every launch a fresh, empty profile (its own --user-data-dir).
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, locale: 'en-US' });
    const page = await context.newPage();
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
      else if (message.type() === 'warning') log(`console warning: ${message.text()}`);
    });
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('requestfailed', (request) => {
      problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`);
    });
    page.on('response', (response) => {
      if (response.status() >= 400) problems.push(`HTTP ${response.status()}: ${response.url()}`);
    });

    // 1. The key is asked for once, then kept in the session.
    await page.goto(base + '/', { waitUntil: 'load' });
    const keyInput = page.getByRole('textbox', { name: 'API key' });
    await keyInput.waitFor({ state: 'visible', timeout: TIMEOUT });
    await keyInput.fill(key);
    await page.getByRole('button', { name: 'Connect' }).click();
    await page.locator('#overview').waitFor({ state: 'visible', timeout: TIMEOUT });
    const stored = await page.evaluate(() => sessionStorage.getItem('volley.apiKey'));
    check(stored === key, 'the key is kept in sessionStorage');

    // 2. Counters appear, then move when the driver sends more mail.
    await waitAbove(page, '#total-delivered', 0);
    const first = await number(page, '#total-delivered');
    log(`counters shown: ${first} delivered`);
    console.log(`ready ${first}`);
    await waitAbove(page, '#total-delivered', first);
    log(`counters moved: ${await number(page, '#total-delivered')} delivered`);
    check(
      (await page.locator('#totals').getAttribute('aria-live')) === 'polite',
      'the counters are a live region',
    );

    // 3. The rate chart is drawn with more than one point and some traffic on it.
    await page.waitForFunction(() => {
      const path = document.querySelector('#chart-rate path.line');
      if (!path) return false;
      const d = path.getAttribute('d') || '';
      const ys = [...d.matchAll(/[ML][\d.]+ ([\d.]+)/g)].map((m) => Number(m[1]));
      return ys.length >= 2 && Math.min(...ys) < Math.max(...ys);
    }, null, { timeout: TIMEOUT });
    for (const id of ['chart-outcomes', 'chart-depth']) {
      check(await page.locator(`#${id} path.line`).count() > 0, `${id} has lines`);
    }
    await page.waitForFunction(
      () => document.querySelectorAll('#chart-histogram rect.bar').length > 0,
      null,
      { timeout: TIMEOUT },
    );

    // 4. Sites, stages and jobs are filled in.
    await page.locator('#sites tbody tr').first().waitFor({ timeout: TIMEOUT });
    const siteRow = await page.locator('#sites tbody tr').first().textContent();
    check(/\d+ \/ \d+ \/ 7/.test(siteRow), `the site shows its limit: ${siteRow}`);
    // The workers card: the embedded backend is this one process.
    await page.locator('#workers tbody tr').first().waitFor({ timeout: TIMEOUT });
    const workerRow = await page.locator('#workers tbody tr').first().textContent();
    check(/\(this one\)/.test(workerRow), `the worker row names this process: ${workerRow}`);
    check(await page.locator('#cluster-backend').textContent() === 'embedded', 'the backend is shown');
    const delivery = page.locator('#stages tbody tr', { hasText: 'Delivery (whole)' });
    const samples = Number(((await delivery.locator('td').first().textContent()) || '').replace(/\D/g, ''));
    check(samples > 0, `the delivery stage has samples: ${samples}`);
    const jobLinks = page.locator('#jobs a.job-link');
    await jobLinks.first().waitFor({ timeout: TIMEOUT });
    check(await jobLinks.count() >= 2, 'both campaigns are listed');
    check(await page.locator('#jobs [role="progressbar"]').count() >= 2, 'jobs have progress bars');
    // Let the last campaign finish so the screenshot shows it done.
    await page.waitForFunction(
      () => [...document.querySelectorAll('#jobs tbody .pill')].every((p) => p.textContent === 'done'),
      null,
      { timeout: TIMEOUT },
    );
    await page.waitForTimeout(1500);
    await page.screenshot({ path: screenshot, fullPage: true });
    log(`screenshot: ${screenshot}`);

    // 5. A job's page: its recipients' outcomes and last replies, paged.
    const jobId = (await jobLinks.last().textContent()).trim();
    await jobLinks.last().click();
    await page.waitForURL(`**/#/jobs/${jobId}`, { timeout: TIMEOUT });
    await page.locator('#job-view').waitFor({ state: 'visible', timeout: TIMEOUT });
    await page.locator('#recipients tbody tr').first().waitFor({ timeout: TIMEOUT });
    check((await page.locator('#job-id').textContent()) === jobId, 'the job view shows its id');
    const rows = await page.locator('#recipients tbody tr').count();
    check(rows === 50, `a page of 50 recipients: ${rows}`);
    const replies = await page.locator('#recipients td.reply').allTextContents();
    check(replies.some((r) => r.startsWith('250')), 'delivered recipients show their 250 reply');
    check(replies.some((r) => /\b5\d\d 5\.\d/.test(r)), 'the bounced recipient shows its 5xx reply');
    await page.screenshot({ path: sibling('-job'), fullPage: true });
    await page.getByRole('button', { name: 'Next →' }).click();
    await page.waitForFunction(
      () => (document.querySelector('#recipients tbody td')?.textContent || '') === '51',
      null,
      { timeout: TIMEOUT },
    );
    check(await page.getByRole('button', { name: 'Next →' }).isDisabled(), 'the last page');
    await page.getByRole('link', { name: '← All jobs' }).click();
    await page.locator('#overview').waitFor({ state: 'visible', timeout: TIMEOUT });

    // 6. A narrow window: nothing wider than the viewport but the scrollable tables.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(1500);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `the page fits a narrow window (overflows by ${overflow}px)`);
    await page.screenshot({ path: sibling('-narrow'), fullPage: true });

    await page.waitForTimeout(500);
    check(problems.length === 0, `no errors in the console or network:\n  ${problems.join('\n  ')}`);
  } finally {
    await browser.close();
  }
}

const watchdog = setTimeout(() => {
  log('timed out');
  process.exit(1);
}, 120_000);

run().then(
  () => {
    clearTimeout(watchdog);
    log('all checks passed');
    process.exit(0);
  },
  (error) => {
    clearTimeout(watchdog);
    log('FAILED:', error && error.stack ? error.stack : error);
    if (problems.length) log('console and network problems:\n  ' + problems.join('\n  '));
    process.exit(1);
  },
);
