// A page in headless chromium with nothing reachable but this machine: open it, wait until
// the element `selector` shows text matching `pattern`, print one JSON report (what it
// showed, requests outside 127.0.0.1, page errors). Used by tests/test_readme.py.
//
//   CHROMIUM=/usr/bin/chromium CHROMIUM_ARGS='[...]' node page_check.mjs URL SELECTOR PATTERN
import { chromium } from "playwright-core";

const [url, selector, pattern] = process.argv.slice(2);
const report = { outside: [], pageErrors: [], consoleErrors: [], shown: "" };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: JSON.parse(process.env.CHROMIUM_ARGS || "[]"),
});
try {
  const context = await browser.newContext();
  await context.route("**/*", (route) => {
    const target = new URL(route.request().url());
    if (target.hostname === "127.0.0.1") return route.continue();
    report.outside.push(target.href);
    return route.abort("blockedbyclient");
  });
  const page = await context.newPage();
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") report.consoleErrors.push(message.text());
  });
  await page.goto(url);
  const wanted = new RegExp(pattern);
  try {
    await page.waitForFunction(
      ([css, source]) => new RegExp(source).test(document.querySelector(css)?.textContent ?? ""),
      [selector, wanted.source],
      { timeout: 30000 },
    );
  } catch (error) {
    report.error = String(error);
  }
  report.shown = await page.locator(selector).textContent();
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
