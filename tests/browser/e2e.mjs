// Real-browser end-to-end test: headless Chromium opens the demo through
// sessiongate, counts visits, logs in, reloads, logs out.
//   node e2e.mjs http://127.0.0.1:8080
// Exits 0 on success; prints what went wrong and exits 1 otherwise.
import { chromium } from "playwright-core";

const url = process.argv[2];
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const text = async (selector) => (await page.textContent(selector)).trim();

  await page.goto(url);
  check((await text("#visits")).endsWith("1"), `first visit: ${await text("#visits")}`);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "sessionid");
  check(session && session.httpOnly, `an HttpOnly session cookie: ${JSON.stringify(cookies)}`);
  check(!(await page.evaluate(() => document.cookie)).includes("sessionid"), "the cookie is hidden from scripts");

  await page.reload();
  check((await text("#visits")).endsWith("2"), `after reload: ${await text("#visits")}`);

  await page.fill("#name", "alice");
  await Promise.all([page.waitForNavigation(), page.click("#login")]);
  check((await text("#user")).includes("alice"), `logged in: ${await text("#user")}`);
  const rotated = (await context.cookies()).find((c) => c.name === "sessionid");
  check(rotated && rotated.value !== session.value, "login rotated the session cookie");

  await page.reload();
  check((await text("#user")).includes("alice"), `still logged in after reload: ${await text("#user")}`);
  check(Number((await text("#visits")).split(" ").pop()) >= 3, `visits kept across login: ${await text("#visits")}`);

  await Promise.all([page.waitForNavigation(), page.click("#logout")]);
  check((await text("#user")).includes("Not logged in"), `logged out: ${await text("#user")}`);
  check((await text("#visits")).endsWith("1"), `a fresh session after logout: ${await text("#visits")}`);
  console.log("browser e2e: ok");
} catch (e) {
  console.error(`browser e2e failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
