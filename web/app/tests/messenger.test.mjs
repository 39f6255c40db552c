// The web messenger end to end, in Debian's headless Chromium driven by
// Playwright: a real relay serving the built page, the real `herold` CLI as
// the other device. The browser enrolls by a one-time code, exchanges
// end-to-end encrypted messages with the CLI both ways, sees a message
// destroy itself, sends a photo dropped on the conversation to the CLI and
// opens one from it, both intact, and survives a relay restart and a
// reload of the page, all over WebTransport; a second browser that cannot
// use QUIC (as on networks that block UDP) falls back to the WebSocket.
//
// Needs: HEROLD_BIN_DIR (herold-relay and herold), the built page
// (web/app/dist) and Chromium (HEROLD_CHROMIUM, default /usr/bin/chromium).
// `scripts/web.sh test` builds everything and runs this.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, mkdirSync, writeFileSync } from "node:fs";
import { createSocket } from "node:dgram";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import zlib from "node:zlib";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.HEROLD_BIN_DIR;
const DIST = resolve(process.env.HEROLD_WEB_DIST ?? join(here, "../dist"));
const CHROMIUM = process.env.HEROLD_CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = process.env.HEROLD_WEB_SCREENSHOTS;
const DEADLINE_MS = 60_000;

assert.ok(BIN, "HEROLD_BIN_DIR must name the directory of herold-relay and herold");

const work = mkdtempSync(join(tmpdir(), "herold-web-"));
const dataDir = join(work, "relay");
const home = join(work, "cli");
let ports;
let relay;
let browser;
let bob;
const children = [];

async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/// Polls `check` until it returns something truthy, or fails at the deadline.
let explain = async () => "";
async function until(what, check, ms = DEADLINE_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}\n${await explain()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function startRelay(extra = []) {
  const p = spawn(
    join(BIN, "herold-relay"),
    [
      "--dev",
      "--data-dir", dataDir,
      "--listen", `127.0.0.1:${ports.relay}`,
      "--admin-listen", `127.0.0.1:${ports.admin}`,
      "--metrics-listen", `127.0.0.1:${ports.metrics}`,
      "--web-root", DIST,
      ...extra,
    ],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  children.push(p);
  return p;
}

async function ready() {
  await until("the relay to be ready", async () => {
    const r = await fetch(`http://127.0.0.1:${ports.metrics}/readyz`);
    return r.ok;
  });
}

const cliEnv = () => ({
  ...process.env,
  HEROLD_HOME: home,
  HEROLD_RELAY: `127.0.0.1:${ports.relay}`,
  HEROLD_DATA_DIR: dataDir,
  HEROLD_ADMIN: `http://127.0.0.1:${ports.admin}`,
});

async function herold(...args) {
  const { stdout } = await promisify(execFile)(join(BIN, "herold"), args, { env: cliEnv() });
  return stdout;
}

/// A long-running `herold listen`, its output collected.
function listen(device) {
  const p = spawn(join(BIN, "herold"), ["listen", "--device", device], { env: cliEnv(), stdio: ["ignore", "pipe", "pipe"] });
  children.push(p);
  const out = { text: "", p };
  p.stdout.on("data", (d) => (out.text += d));
  p.stderr.on("data", (d) => (out.text += d));
  return out;
}

async function stop(p) {
  if (p.exitCode !== null) return;
  const done = new Promise((r) => p.once("exit", r));
  p.kill("SIGTERM");
  await done;
}

before(async () => {
  ports = { relay: await freePort(), admin: await freePort(), metrics: await freePort() };
  mkdirSync(home, { recursive: true });
  relay = startRelay();
  await ready();
});

after(async () => {
  await browser?.close();
  for (const c of children) await stop(c);
  rmSync(work, { recursive: true, force: true });
});

/// A PNG of `w` x `h` pixels of coloured noise: a photo that does not
/// compress, several chunks of ciphertext.
function png(w, h) {
  const crc = (buf) => zlib.crc32(buf) >>> 0;
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const raw = Buffer.alloc((w * 3 + 1) * h);
  let seed = 42;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      const o = y * (w * 3 + 1) + 1 + x * 3;
      raw[o] = (x * 255) / w + (seed & 31);
      raw[o + 1] = (y * 255) / h + ((seed >> 8) & 31);
      raw[o + 2] = 128 + ((seed >> 16) & 63);
    }
  }
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([sig, chunk("IHDR", ihdr), chunk("IDAT", zlib.deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

/// Waits until `page` is connected, and says over which transport.
async function connected(page, what, ms = DEADLINE_MS) {
  const status = page.getByTestId("status");
  await until(what, async () => (await status.textContent()) === "Connected" && (await status.getAttribute("data-transport")), ms);
  return status.getAttribute("data-transport");
}

/// Chromium trusting the relay's self-signed key (the dev certificate's
/// public key, by its SHA-256), with `extra` flags.
async function launch(extra = []) {
  const der = readFileSync(join(dataDir, "tls", "cert.der"));
  const spki = new X509Certificate(der).publicKey.export({ type: "spki", format: "der" });
  const pin = createHash("sha256").update(spki).digest("base64");
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      `--ignore-certificate-errors-spki-list=${pin}`,
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      ...extra,
    ],
  });
}

async function shot(page, name) {
  if (SHOTS) await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

test("a browser enrolls, talks and sends photos with a CLI device both ways, and survives a relay restart and a reload", async () => {
  await herold("admin", "account", "create", "alice", "--name", "Alice Huber");
  await herold("admin", "account", "create", "bob", "--name", "Bob Maier");
  // Bob's phone listens while his laptop writes (a device's MLS state is
  // open in one process at a time).
  await herold("device", "new", "bob", "phone");
  await herold("device", "new", "bob", "laptop");
  await herold("admin", "group", "station-42", "--member", "alice", "--member", "bob", "--title", "Polling station 42");
  const codes = JSON.parse(await herold("--json", "admin", "codes", "--account", "alice"));
  const code = (Array.isArray(codes) ? codes : codes.codes)[0].code;
  assert.ok(code, "a code for alice");
  // Bob's devices put their key packages up, so the browser can add them.
  await herold("listen", "--device", "bob.phone", "--until-synced");
  await herold("listen", "--device", "bob.laptop", "--until-synced");
  bob = listen("bob.phone");

  // The dev certificate is self-signed: Chromium trusts its key, no other
  // (the page pins WebTransport's certificate by itself).
  browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`page error: ${e.message}`));
  // On a timeout: what the page and the CLI said.
  explain = async () =>
    `page log:\n${logs.join("\n")}\npage text:\n${await page.locator("body").innerText().catch(() => "")}\nCLI:\n${bob?.text ?? ""}`;
  const violations = [];
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy/i.test(m.text())) violations.push(m.text());
  });
  page.setDefaultTimeout(DEADLINE_MS);
  await page.goto(`https://127.0.0.1:${ports.relay}/`);

  // Enroll: a wrong code is refused with the relay's reason.
  await page.getByTestId("device-id").fill("alice.web");
  await page.getByTestId("code").fill("WRONG-CODE-0000");
  await shot(page, "web-enroll");
  await page.getByTestId("enroll").click();
  await until("the refusal", async () => (await page.getByTestId("enroll-error").textContent())?.length > 0);
  await page.getByTestId("code").fill(code);
  await page.getByTestId("enroll").click();
  assert.equal(await connected(page, "the connection"), "webtransport", `a browser that can use QUIC does\n${await explain()}`);
  // The device key is a WebCrypto key the page cannot read: no seed is kept.
  const kept = await page.evaluate(
    () =>
      new Promise((ok, fail) => {
        const open = indexedDB.open("herold");
        open.onerror = () => fail(open.error);
        open.onsuccess = () => {
          const get = open.result.transaction("device").objectStore("device").get("self");
          get.onsuccess = () => {
            const r = get.result;
            ok({ cryptoKey: r.key instanceof CryptoKey, extractable: r.key?.extractable, algorithm: r.key?.algorithm?.name, usages: r.key?.usages, seed: r.seed ?? null });
            open.result.close();
          };
          get.onerror = () => fail(get.error);
        };
      }),
  );
  assert.deepEqual(kept, { cryptoKey: true, extractable: false, algorithm: "Ed25519", usages: ["sign"], seed: null });

  // Browser to CLI, end-to-end encrypted.
  await page.getByTestId("open-id").fill("station-42");
  await page.getByTestId("open-id").press("Enter");
  await page.getByTestId("compose").fill("Hello from the office desk");
  await page.getByTestId("send").click();
  await until("the CLI to print the browser's message", async () => bob.text.includes("Hello from the office desk"));

  // CLI to browser: it arrives live.
  await herold("send", "--device", "bob.laptop", "station-42", "Ballot boxes arrive at 7:40");
  const texts = page.getByTestId("message-text");
  await until("the browser to show the CLI's message", async () => (await texts.allTextContents()).includes("Ballot boxes arrive at 7:40"));

  // A message that destroys itself shows its timer.
  await page.getByTestId("expiry").selectOption("60000");
  await page.getByTestId("compose").fill("Door code 4711");
  await page.getByTestId("send").click();
  await until("the timer", async () => /Self-destructs in \d+ s/.test((await page.locator(".timer").first().textContent()) ?? ""));
  await until("the CLI to print it", async () => bob.text.includes("Door code 4711"));
  await page.getByTestId("expiry").selectOption("0");

  // A photo dragged onto the conversation reaches the CLI intact.
  const photo = png(320, 200);
  const digest = createHash("sha256").update(photo).digest("hex");
  const dropped = await page.evaluateHandle((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], "pothole.png", { type: "image/png" }));
    return dt;
  }, photo.toString("base64"));
  await page.dispatchEvent(".conversation", "drop", { dataTransfer: dropped });
  await until("the CLI to save the photo intact", async () => bob.text.includes(`sha256 ${digest}`));

  // A photo from the CLI opens in the page, and saves intact.
  const photoFile = join(work, "from-bob.png");
  writeFileSync(photoFile, photo);
  await herold("send", "--device", "bob.laptop", "station-42", "--file", photoFile);
  await until("the file in the page", async () => (await page.getByTestId("file").count()) === 2);
  await page.getByTestId("file").last().click();
  await until("the photo shown", async () => await page.getByTestId("photo").isVisible());
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("save").last().click()]);
  const saved = readFileSync(await download.path());
  assert.equal(createHash("sha256").update(saved).digest("hex"), digest, "the photo arrives intact");
  await shot(page, "web-conversation");

  // A message in a conversation that is not open counts as unread.
  await herold("admin", "group", "station-43", "--member", "alice", "--member", "bob", "--title", "Polling station 43");
  await herold("send", "--device", "bob.laptop", "station-43", "Station 43 needs pens");
  await until("the unread count", async () => (await page.getByTestId("unread").first().textContent()) === "1");
  await shot(page, "web-unread");

  // The relay restarts: the page says so, reconnects, and goes on.
  await stop(relay);
  await until("the page to notice", async () => await page.getByTestId("banner").isVisible());
  assert.match(await page.getByTestId("banner").textContent(), /Connection lost/);
  await shot(page, "web-reconnecting");
  relay = startRelay();
  await ready();
  // (Over either transport: Chromium holds back new WebTransport
  // handshakes for a while after some failed, as they did while the relay
  // was away; the reload below goes back to WebTransport.)
  await connected(page, "the page to reconnect", 90_000);
  assert.equal(await page.getByTestId("banner").isVisible(), false);
  await page.locator('[data-conversation="station-42"]').click();
  await page.getByTestId("expiry").selectOption("0");
  await page.getByTestId("compose").fill("Still here after the restart");
  await page.getByTestId("send").click();
  await until("the CLI to get the message after the restart", async () => bob.text.includes("Still here after the restart"), 90_000);
  await herold("send", "--device", "bob.laptop", "station-42", "Welcome back");
  await until("the browser to get the reply", async () => (await texts.allTextContents()).includes("Welcome back"));

  // The page reloads: the browser keeps its device, its MLS state and its
  // conversations (IndexedDB), and reads and writes in the same group.
  await page.reload();
  assert.equal(await connected(page, "the page to reconnect after the reload"), "webtransport");
  await page.locator('[data-conversation="station-42"]').click();
  assert.ok((await texts.allTextContents()).includes("Welcome back"), "the conversation is kept");
  // A photo received before the reload still opens, intact (its key was
  // kept with the MLS state).
  await page.getByTestId("file").last().click();
  await until("the photo shown after the reload", async () => await page.getByTestId("photo").isVisible());
  const [again] = await Promise.all([page.waitForEvent("download"), page.getByTestId("save").last().click()]);
  assert.equal(createHash("sha256").update(readFileSync(await again.path())).digest("hex"), digest, "the photo still opens intact");
  await herold("send", "--device", "bob.laptop", "station-42", "Read after the reload");
  await until("the browser to read after the reload", async () => (await texts.allTextContents()).includes("Read after the reload"));
  await page.getByTestId("compose").fill("Written after the reload");
  await page.getByTestId("send").click();
  await until("the CLI to read it", async () => bob.text.includes("Written after the reload"));

  assert.deepEqual(violations, [], "the page runs under its Content-Security-Policy");
});

test("a browser whose UDP to the relay is dropped falls back to the WebSocket", async () => {
  await herold("admin", "account", "create", "carol", "--name", "Carol Wenger");
  const codes = JSON.parse(await herold("--json", "admin", "codes", "--account", "carol"));
  const code = (Array.isArray(codes) ? codes : codes.codes)[0].code;
  // A UDP black hole: the relay's TCP port also answers at 127.0.0.2,
  // where a socket of this test takes the browser's QUIC packets and
  // answers none, as behind a firewall that drops UDP. (The CLI goes on
  // over QUIC at 127.0.0.1.)
  const hole = createSocket("udp4");
  let dropped = 0;
  hole.on("message", () => dropped++);
  await new Promise((ok, fail) => {
    hole.once("error", fail);
    hole.bind(ports.relay, "127.0.0.2", ok);
  });
  const name = `127.0.0.2:${ports.relay}`;
  await stop(relay);
  relay = startRelay(["--tcp-listen", name, "--web-names", name]);
  await ready();
  const desk = await launch();
  try {
    const page = await desk.newPage();
    const logs = [];
    page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
    explain = async () => `page log:\n${logs.join("\n")}\nCLI:\n${bob?.text ?? ""}`;
    page.setDefaultTimeout(DEADLINE_MS);
    await page.goto(`https://${name}/`);
    await page.getByTestId("device-id").fill("carol.web");
    await page.getByTestId("code").fill(code);
    await page.getByTestId("enroll").click();
    assert.equal(await connected(page, "the fallback connection"), "websocket");
    assert.ok(dropped > 0, "the browser tried QUIC first, into the black hole");
    assert.ok(logs.some((l) => l.includes("WebTransport did not open in time")), logs.join("\n"));
    await herold("admin", "group", "station-44", "--member", "carol", "--member", "bob", "--title", "Polling station 44");
    await page.getByTestId("open-id").fill("station-44");
    await page.getByTestId("open-id").press("Enter");
    await page.getByTestId("compose").fill("Writing from a network without UDP");
    await page.getByTestId("send").click();
    await until("the CLI to print it", async () => bob.text.includes("Writing from a network without UDP"));
    await herold("send", "--device", "bob.laptop", "station-44", "Received over TCP");
    const texts = page.getByTestId("message-text");
    await until("the browser to show the reply", async () => (await texts.allTextContents()).includes("Received over TCP"));

    // Bob links a browser of his own with a code his device shows (its QR
    // code opens the page with the code filled in).
    const shown = await herold("device", "link", "--device", "bob.laptop", "--url", `https://${name}/`);
    const link = /link code (\S+) for account bob/.exec(shown)?.[1];
    assert.ok(link, shown);
    const bobs = await (await desk.newContext()).newPage();
    bobs.setDefaultTimeout(DEADLINE_MS);
    await bobs.goto(`https://${name}/#code=${link}`);
    assert.equal(await bobs.getByTestId("code").inputValue(), link, "the link fills the code in");
    assert.equal(new URL(bobs.url()).hash, "", "and leaves the address");
    await bobs.getByTestId("device-id").fill("bob.desk");
    await bobs.getByTestId("enroll").click();
    await connected(bobs, "bob's linked browser");
    assert.match(await bobs.getByTestId("who").textContent(), /bob · bob\.desk/);
  } finally {
    await desk.close();
    hole.close();
  }
});
