// GraphiQL in headless chromium, as a newcomer uses it, with nothing reachable but this
// machine: open the page (a fresh profile: its example tabs), run the first example tab
// (Signup) as it opens, switch to the SendOtp tab and run it, put the token in the Headers
// tab, run `{ me { id } }`, send a message over HTTP, then run a messageStream subscription
// for its reply in GraphiQL and watch the result pane. Prints one JSON report on stdout (tests/test_graphiql_browser.py
// asserts on it); exits non-zero when a step times out.
//
//   CHROMIUM=/usr/bin/chromium CHROMIUM_ARGS='["--headless", ...]' \
//     node graphiql_check.mjs http://127.0.0.1:PORT <access token> <chatroom id>
import { chromium } from "playwright-core";

const [baseUrl, token, chatroomId] = process.argv.slice(2);
const origin = new URL(baseUrl).origin;
const STEP_MS = 15000;

const report = {
  outside: [], // requests to anywhere but the app (blocked)
  failed: [], // requests that failed anyway
  requests: [], // every URL the page fetched
  websockets: [],
  consoleErrors: [],
  pageErrors: [],
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: JSON.parse(process.env.CHROMIUM_ARGS || "[]"),
});
// What the result pane shows: its rendered lines.
const shown = () =>
  page.evaluate(() =>
    [...document.querySelectorAll(".graphiql-response .CodeMirror-line")]
      .map((line) => line.textContent)
      .join("\n"),
  );
let page;
try {
  const context = await browser.newContext();
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (new URL(url).origin === origin) return route.continue();
    report.outside.push(url);
    return route.abort("blockedbyclient");
  });
  page = await context.newPage();
  page.on("request", (request) => report.requests.push(request.url()));
  page.on("requestfailed", (request) =>
    report.failed.push(`${request.url()}: ${request.failure()?.errorText}`),
  );
  page.on("websocket", (ws) => report.websockets.push(ws.url()));
  page.on("console", (message) => {
    if (message.type() === "error") report.consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));

  // Replaces an editor's text the way pasting does (no auto-closed brackets).
  async function paste(selector, text) {
    await page.locator(selector).click();
    await page.keyboard.press("ControlOrMeta+A");
    await page.keyboard.insertText(text);
  }
  const query = ".graphiql-query-editor .CodeMirror";
  // GraphiQL reads an edited query a moment later (debounced), then shows it in the page's
  // URL (`?q=`): only then does it know a subscription is one (and send it over the websocket).
  async function enterQuery(text) {
    await paste(query, text);
    await page.waitForFunction((q) => new URLSearchParams(location.search).get("q") === q, text, {
      timeout: STEP_MS,
    });
  }

  const started = Date.now();
  await page.goto(`${baseUrl}/graphql`);
  await page.locator(query).waitFor({ timeout: STEP_MS });
  report.loadedMs = Date.now() - started;
  // A stylesheet the browser refused (integrity, type) has no sheet.
  report.stylesheets = await page.evaluate(() =>
    [...document.querySelectorAll('link[rel="stylesheet"]')].map((link) => ({
      href: link.getAttribute("href"),
      applied: link.sheet !== null,
    })),
  );

  // The example tabs: their titles, and the active one's query and variables as opened.
  const editorText = (selector) =>
    page.evaluate((s) => document.querySelector(s).CodeMirror.getValue(), selector);
  const variables = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror";
  const execute = () => page.getByRole("button", { name: /^Execute query/ }).click();
  const answered = (field) =>
    page.waitForFunction(
      (f) => document.querySelector(".graphiql-response")?.textContent.includes(`"${f}"`),
      field,
      { timeout: STEP_MS },
    );
  report.tabs = await page.evaluate(() =>
    [...document.querySelectorAll('[role="tab"] .graphiql-tab-button')].map((b) => b.textContent),
  );
  const opened = async () => ({
    active: await page.evaluate(
      () => document.querySelector(".graphiql-tab-active .graphiql-tab-button")?.textContent,
    ),
    query: await editorText(query),
    variables: await editorText(variables),
  });
  report.firstTab = await opened();
  await execute();
  await answered("signup");
  report.signup = await shown();
  await page.locator(".graphiql-tab-button", { hasText: /^SendOtp$/ }).click();
  await page.waitForFunction(
    () => document.querySelector(".graphiql-tab-active .graphiql-tab-button")?.textContent === "SendOtp",
    null,
    { timeout: STEP_MS },
  );
  report.sendOtpTab = await opened();
  await execute();
  await answered("sendOtp");
  report.sendOtp = await shown();

  await page.getByRole("button", { name: "Headers", exact: true }).click();
  const headers = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror";
  await paste(headers, JSON.stringify({ Authorization: `Bearer ${token}` }));
  await enterQuery("{ me { id } }");
  await page.getByRole("button", { name: /^Execute query/ }).click();
  await page.waitForFunction(
    () => document.querySelector(".graphiql-response")?.textContent.includes('"me"'),
    null,
    { timeout: STEP_MS },
  );
  report.me = await shown();

  // The reply: the offline model writes a word every 50 ms and repeats the message (up to 200
  // characters), so thirty words stream long enough to watch.
  const content = Array.from({ length: 30 }, (_, i) => `word${i}`).join(" ");
  const sent = await fetch(`${baseUrl}/graphql`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify({
      query:
        "mutation($input: SendMessageInput!) { sendMessage(input: $input) { reply { id } errors { code } } }",
      variables: { input: { chatroomId, content } },
    }),
  }).then((response) => response.json());
  const replyId = sent.data.sendMessage.reply.id;
  report.content = content;

  // Every distinct text the pane shows while the subscription runs.
  await page.evaluate(() => {
    window.__shown = [];
    const pane = document.querySelector(".graphiql-response");
    const record = () => {
      const text = [...pane.querySelectorAll(".CodeMirror-line")]
        .map((line) => line.textContent)
        .join("\n");
      if (text !== window.__shown.at(-1)) window.__shown.push(text);
    };
    new MutationObserver(record).observe(pane, {
      subtree: true,
      childList: true,
      characterData: true,
    });
  });
  await enterQuery(
    `subscription { messageStream(messageId: "${replyId}") { seq delta status message { content } } }`,
  );
  await page.getByRole("button", { name: /^Execute query/ }).click();
  await page.waitForFunction(
    () => (window.__shown.at(-1) || "").includes('"COMPLETE"'),
    null,
    { timeout: STEP_MS },
  );
  report.stream = await page.evaluate(() => window.__shown);
  report.tookMs = Date.now() - started;
} catch (error) {
  report.error = String(error?.stack || error);
  report.shownAtError = await shown().catch(() => null);
  report.queryAtError = await page
    .evaluate(() => document.querySelector(".graphiql-query-editor .CodeMirror").CodeMirror.getValue())
    .catch(() => null);
  process.exitCode = 1;
} finally {
  await browser.close();
  console.log(JSON.stringify(report));
}
