// Drives the demo page of `sockeye serve` in headless Chromium (Debian's /usr/bin/chromium,
// through playwright-core): the clock changes over time, and a chat message sent from one
// page arrives in a second page (and the other way round). Saves a screenshot.
//
// usage: node demo.mjs http://127.0.0.1:PORT/ SCREENSHOT.png
// Exit status 0 when every check passed; every step is bounded in time.
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node demo.mjs URL SCREENSHOT.png");
  process.exit(2);
}
const STEP = 10_000;
// A hard stop for the whole run, whatever hangs.
const watchdog = setTimeout(() => {
  console.error("FAIL: the browser test took more than 90 s");
  process.exit(3);
}, 90_000);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

let failed = false;
const check = (ok, what) => {
  console.log(`${ok ? "ok" : "FAIL"}: ${what}`);
  if (!ok) failed = true;
};

let alice;
try {
  alice = await (await browser.newContext({ viewport: { width: 1100, height: 640 } })).newPage();
  const bob = await (await browser.newContext()).newPage();
  for (const page of [alice, bob]) {
    page.on("console", (m) => console.log(`  [page console] ${m.text()}`));
    page.on("pageerror", (e) => { console.log(`  [page error] ${e}`); failed = true; });
  }
  await alice.goto(url, { timeout: STEP });
  check((await alice.title()) === "sockeye demo", "the page is served at GET /");

  // The clock: connected, then its text changes (the server pushes every second).
  await alice.waitForFunction(
    () => document.getElementById("clock-state").textContent === "connected",
    null, { timeout: STEP });
  await alice.waitForFunction(
    () => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/.test(document.getElementById("clock").textContent),
    null, { timeout: STEP });
  const first = await alice.textContent("#clock");
  await alice.waitForFunction(
    (before) => document.getElementById("clock").textContent !== before,
    first, { timeout: STEP });
  const second = await alice.textContent("#clock");
  check(Date.parse(second) > Date.parse(first), `the clock moves: ${first} -> ${second}`);

  // The chat: both pages join the default room, then talk.
  await bob.goto(url, { timeout: STEP });
  for (const page of [alice, bob]) {
    await page.waitForFunction(
      () => document.getElementById("chat-state").textContent === "joined lobby",
      null, { timeout: STEP });
  }
  await alice.fill("#name", "alice");
  await bob.fill("#name", "bob");

  const say = async (page, text) => {
    await page.fill("#text", text);
    await page.click("#send");
  };
  const received = (page, who, text) => page.waitForFunction(
    ([who, text]) => [...document.querySelectorAll("#messages li")].some(
      (li) => li.querySelector(".who")?.textContent === who && li.textContent.endsWith(text)),
    [who, text], { timeout: STEP });

  await say(alice, "hello from alice");
  await received(bob, "alice", "hello from alice");
  check(true, "bob's page shows alice's message");
  await say(bob, "hi alice, bob here");
  await received(alice, "bob", "hi alice, bob here");
  check(true, "alice's page shows bob's answer");

  // The relay does not send a message back to its sender: alice shows hers once.
  const mine = await alice.$$eval("#messages li",
    (items) => items.filter((li) => li.textContent.endsWith("hello from alice")).length);
  check(mine === 1, `alice's own message shown once (${mine})`);

  // A second room is a second topic: carol and alice meet in room "other"; bob, still in
  // the lobby, does not get what is said there (the hub hands a message to every subscriber
  // of its topic at once, so once carol has it, bob would have it too).
  const carol = await (await browser.newContext()).newPage();
  await carol.goto(url, { timeout: STEP });
  for (const page of [alice, carol]) {
    await page.fill("#room", "other");
    await page.click("#join");
    await page.waitForFunction(
      () => document.getElementById("chat-state").textContent === "joined other",
      null, { timeout: STEP });
  }
  await carol.fill("#name", "carol");
  await say(alice, "only for room other");
  await received(carol, "alice", "only for room other");
  await bob.waitForTimeout(300);
  const leaked = await bob.$$eval("#messages li",
    (items) => items.filter((li) => li.textContent.endsWith("only for room other")).length);
  check(leaked === 0, "rooms are separate topics (carol got it, bob did not)");
} catch (e) {
  check(false, `${e.message.split("\n")[0]}`);
} finally {
  if (alice) {
    await alice.screenshot({ path: screenshot, fullPage: true }).catch((e) => {
      console.log(`FAIL: screenshot: ${e.message}`);
      failed = true;
    });
  }
  await browser.close();
  clearTimeout(watchdog);
}
process.exit(failed ? 1 : 0);
