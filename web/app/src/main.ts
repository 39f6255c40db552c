// The web messenger: enrollment of this browser as a device, the
// conversation list with unread counts, a conversation with live
// delivery and self-destruct timers, and the connection's state. The
// protocol, MLS and the keys' use run in the Rust SDK compiled to
// WebAssembly (`./pkg`, built from web/core); this file only draws.

import "./style.css";
import init, { WebClient, newDeviceKey } from "./pkg/herold_web.js";
import { Conversations, expiresIn, sizeText, type HeroldEvent, type ShownMessage } from "./events";
import { type DeviceRecord, forgetAll, loadConversations, loadDevice, loadFiles, loadMls, saveDevice, saveState } from "./store";

const app = document.getElementById("app")!;
const banner = document.getElementById("banner")!;
const status = document.getElementById("status")!;
const who = document.getElementById("who")!;

type Attrs = Record<string, string>;
function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  // Text only through text nodes: nothing a message says becomes markup.
  for (const c of children) e.append(c);
  return e;
}

function relayUrl(): string {
  return `wss://${location.host}/v1`;
}

function showBanner(text: string | null, kind: "offline" | "error" = "offline") {
  banner.hidden = text === null;
  banner.className = `banner ${kind}`;
  banner.textContent = text ?? "";
}

// ---- enrollment ----

/// A new device key: a WebCrypto Ed25519 key pair whose private half cannot
/// be exported (not even by this page's script), or, where the browser has
/// no Ed25519 in WebCrypto, a seed made by the SDK.
async function deviceKey(): Promise<{ publicHex: string; secret: { key: CryptoKey } | { seed: string } }> {
  try {
    const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"])) as CryptoKeyPair;
    const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    const publicHex = [...raw].map((b) => b.toString(16).padStart(2, "0")).join("");
    return { publicHex, secret: { key: pair.privateKey } };
  } catch {
    const k = newDeviceKey();
    return { publicHex: k.public, secret: { seed: k.seed } };
  }
}

function enrollView(error?: string) {
  const device = el("input", { id: "device", name: "device", required: "", autocomplete: "off", placeholder: "alice.web", "data-testid": "device-id" });
  const code = el("input", { id: "code", name: "code", required: "", autocomplete: "one-time-code", placeholder: "ABCD-EFGH-JKLM", "data-testid": "code" });
  const err = el("p", { class: "error", role: "alert", "data-testid": "enroll-error" }, error ?? "");
  const button = el("button", { type: "submit", "data-testid": "enroll" }, "Enroll this browser");
  const form = el(
    "form",
    { class: "enroll" },
    el("h1", {}, "Use Herold in this browser"),
    el("p", {}, "Enter the one-time enrollment code from your letter, from IT, or shown by your phone (Link a device), and a name for this browser as a device of your account."),
    el("label", { for: "device" }, "Device id"),
    device,
    el("label", { for: "code" }, "Enrollment code"),
    code,
    button,
    err,
  );
  // A phone's link code may come in the address (`#code=...`, its QR
  // code's link): filled in, and taken out of the address and history.
  const linked = new URLSearchParams(location.hash.slice(1)).get("code");
  if (linked) {
    code.value = linked;
    history.replaceState(null, "", location.pathname + location.search);
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    err.textContent = "";
    try {
      const key = await deviceKey();
      const resp = await fetch("/v1/enroll", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ code: code.value.trim(), device_id: device.value.trim(), public_key: key.publicHex }),
      });
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error ?? `enrollment failed (${resp.status})`);
      const record: DeviceRecord = { deviceId: body.device_id, accountId: body.account_id, relayUrl: relayUrl(), ...key.secret };
      await saveDevice(record);
      await start(record);
    } catch (e) {
      err.textContent = e instanceof Error ? e.message : String(e);
      button.disabled = false;
    }
  });
  app.replaceChildren(form);
}

// ---- the messenger ----

class Messenger {
  private convs = new Conversations();
  private current: string | null = null;
  private list = el("ul", { class: "conversations", "data-testid": "conversations" });
  private pane = el("section", { class: "conversation" });

  private saving = false;
  private dirty = false;

  constructor(private client: WebClient, private record: DeviceRecord) {}

  /// Keeps what the page shows, and the MLS state of the newest
  /// checkpoint, in IndexedDB after every change, one write at a time (a
  /// change during a write writes again); then tells the relay that the
  /// deliveries the checkpoint covers arrived. A page closed before that
  /// gets them again.
  save() {
    if (this.saving) {
      this.dirty = true;
      return;
    }
    this.saving = true;
    this.dirty = false;
    const cp = this.client.takeCheckpoint();
    const files = this.client.filesImage(JSON.stringify(this.convs.files()));
    saveState(cp ? { image: cp.image, positions: cp.positions } : undefined, this.convs.save(), files)
      .then(() => (cp ? this.client.checkpointKept(cp.id) : undefined))
      .catch((e) => showBanner(`Cannot keep this browser's state: ${e instanceof Error ? e.message : String(e)}`, "error"))
      .finally(() => {
        this.saving = false;
        if (this.dirty) this.save();
      });
  }

  async restore() {
    this.convs.restore(await loadConversations());
    this.convs.expire(Date.now());
  }

  mount() {
    const open = el("input", { placeholder: "Open conversation…", "aria-label": "Conversation id", "data-testid": "open-id" });
    const openForm = el("form", { class: "open" }, open);
    openForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = open.value.trim();
      if (id) {
        this.convs.get(id);
        open.value = "";
        this.select(id);
      }
    });
    const side = el("nav", { class: "side" }, openForm, this.list);
    app.replaceChildren(el("div", { class: "messenger" }, side, this.pane));
    this.renderList();
    this.renderPane();
    setInterval(() => this.tick(), 1000);
  }

  handle(e: HeroldEvent) {
    this.show(e);
    // What changed is kept: the MLS state, and what the page shows with
    // the keys of its files.
    if (e.type !== "synced" && e.type !== "disconnected" && e.type !== "stopped") this.save();
  }

  private show(e: HeroldEvent) {
    switch (e.type) {
      case "message": {
        const mine = e.sender_device === this.record.deviceId;
        const from = e.sender_account || e.sender_device;
        const file = e.file ? { name: e.file.name, mediaType: e.file.media_type, size: e.file.size } : undefined;
        const m = { seq: e.seq, from, mine, text: e.text, sentAtMs: e.sent_at_ms, expiresAtMs: e.expires_at_ms, file };
        if (this.convs.add(e.conversation, m, e.conversation === this.current)) this.render();
        break;
      }
      case "group_changed":
        if (e.title) this.convs.get(e.conversation).title = e.title;
        this.convs.get(e.conversation);
        this.render();
        break;
      case "joined":
      case "key_received":
      case "restarted":
        this.convs.get(e.conversation);
        this.render();
        break;
      case "synced": {
        const via = this.client.transport();
        status.textContent = "Connected";
        status.className = "status online";
        status.dataset.transport = via ?? "";
        status.title = via === "webtransport" ? "Connected over WebTransport (QUIC)" : "Connected over a WebSocket (TCP)";
        showBanner(null);
        break;
      }
      case "disconnected":
        status.dataset.transport = "";
        status.textContent = "Reconnecting…";
        status.className = "status offline";
        showBanner("Connection lost. Reconnecting… Messages you send now go out once it is back.");
        break;
      case "stopped":
        status.textContent = "Disconnected";
        status.className = "status offline";
        showBanner(`Disconnected for good: ${e.reason}`, "error");
        break;
      default:
        break;
    }
  }

  private select(id: string) {
    this.current = id;
    this.convs.get(id).unread = 0;
    this.render();
  }

  private tick() {
    if (this.convs.expire(Date.now())) {
      this.render();
      // Expired messages' files are forgotten with them.
      this.save();
    }
    for (const t of this.pane.querySelectorAll<HTMLElement>("[data-expires]")) {
      t.textContent = `Self-destructs in ${expiresIn(Number(t.dataset.expires), Date.now())}`;
    }
  }

  private render() {
    this.renderList();
    this.renderPane();
  }

  private renderList() {
    const items = this.convs.list().map((c) => {
      const badge = c.unread > 0 ? el("span", { class: "unread", "data-testid": "unread" }, String(c.unread)) : "";
      const li = el("li", { class: c.id === this.current ? "selected" : "", "data-conversation": c.id }, el("span", { class: "name" }, c.title ?? c.id), badge);
      li.addEventListener("click", () => this.select(c.id));
      return li;
    });
    this.list.replaceChildren(...items);
  }

  /// Encrypts and sends each file; shows the first failure.
  private async sendFiles(conv: string, files: File[], ms: number, err: HTMLElement) {
    for (const f of files) {
      const status = `Sending ${f.name}…`;
      showBanner(status);
      try {
        const bytes = new Uint8Array(await f.arrayBuffer());
        const seq = await this.client.sendFile(conv, f.name, f.type, bytes, ms);
        const file = { name: f.name, mediaType: f.type, size: f.size };
        this.convs.add(conv, { seq, from: this.record.accountId, mine: true, text: "", sentAtMs: Date.now(), expiresAtMs: ms ? Date.now() + ms : 0, file }, true);
        this.save();
        this.render();
      } catch (e) {
        err.textContent = `${f.name}: ${e instanceof Error ? e.message : String(e)}`;
      } finally {
        if (banner.textContent === status) showBanner(null);
      }
    }
  }

  /// A file in a message: its name and size, opened on demand (fetched,
  /// checked and decrypted in the module); a photo is shown in place.
  private fileView(conv: string, m: ShownMessage): HTMLElement {
    const f = m.file!;
    const open = el("button", { type: "button", class: "file", "data-testid": "file" }, `${f.name || "file"} · ${sizeText(f.size)}`);
    const box = el("span", { class: "text" }, open);
    open.addEventListener("click", async () => {
      open.disabled = true;
      try {
        const bytes: Uint8Array = await this.client.fetchFile(conv, m.seq);
        const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: f.mediaType || "application/octet-stream" }));
        if (f.mediaType.startsWith("image/")) {
          box.append(el("img", { src: url, alt: f.name, class: "photo", "data-testid": "photo" }));
        }
        const save = el("a", { href: url, download: f.name || "file", "data-testid": "save" }, "Save");
        box.append(save);
      } catch (e) {
        box.append(el("span", { class: "error" }, e instanceof Error ? e.message : String(e)));
        open.disabled = false;
      }
    });
    return box;
  }

  private renderPane() {
    if (this.current === null) {
      this.pane.replaceChildren(el("p", { class: "empty" }, "Choose a conversation, or open one by its id."));
      return;
    }
    const c = this.convs.get(this.current);
    const now = Date.now();
    const messages = c.messages.map((m) =>
      el(
        "li",
        { class: m.mine ? "message mine" : "message", "data-seq": String(m.seq) },
        el("span", { class: "from" }, m.mine ? "You" : m.from),
        m.file ? this.fileView(c.id, m) : el("span", { class: "text", "data-testid": "message-text" }, m.text),
        el("time", {}, new Date(m.sentAtMs).toLocaleTimeString()),
        m.expiresAtMs ? el("span", { class: "timer", "data-expires": String(m.expiresAtMs), title: "This message destroys itself on every device" }, `Self-destructs in ${expiresIn(m.expiresAtMs, now)}`) : "",
      ),
    );
    const list = el("ol", { class: "messages", "data-testid": "messages" }, ...messages);
    const text = el("textarea", { rows: "3", placeholder: "Write a message…", "aria-label": "Message", "data-testid": "compose" });
    const expiry = el(
      "select",
      { "aria-label": "Self-destruct", "data-testid": "expiry" },
      el("option", { value: "0" }, "Keep the message"),
      el("option", { value: "60000" }, "Self-destruct: 1 minute"),
      el("option", { value: "3600000" }, "Self-destruct: 1 hour"),
      el("option", { value: "86400000" }, "Self-destruct: 1 day"),
    );
    const send = el("button", { type: "submit", "data-testid": "send" }, "Send");
    const err = el("p", { class: "error", role: "alert" });
    const form = el("form", { class: "compose" }, text, expiry, send, err);
    const conv = c.id;
    const submit = async () => {
      const body = text.value;
      if (!body.trim()) return;
      send.disabled = true;
      err.textContent = "";
      try {
        const ms = Number(expiry.value);
        const seq = await this.client.send(conv, body, ms);
        this.convs.add(conv, { seq, from: this.record.accountId, mine: true, text: body, sentAtMs: Date.now(), expiresAtMs: ms ? Date.now() + ms : 0 }, true);
        this.save();
        text.value = "";
        this.render();
      } catch (e) {
        err.textContent = e instanceof Error ? e.message : String(e);
      } finally {
        send.disabled = false;
      }
    };
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void submit();
    });
    text.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) {
        ev.preventDefault();
        void submit();
      }
    });
    // Files: dropped on the conversation, or picked.
    const pick = el("input", { type: "file", multiple: "", "aria-label": "Attach files", "data-testid": "pick" });
    pick.addEventListener("change", () => {
      if (pick.files) void this.sendFiles(conv, [...pick.files], Number(expiry.value), err);
    });
    send.before(el("label", { class: "attach" }, "Attach…", pick));
    this.pane.ondragover = (ev) => {
      ev.preventDefault();
      this.pane.classList.add("dropping");
    };
    this.pane.ondragleave = () => this.pane.classList.remove("dropping");
    this.pane.ondrop = (ev) => {
      ev.preventDefault();
      this.pane.classList.remove("dropping");
      const files = ev.dataTransfer ? [...ev.dataTransfer.files] : [];
      if (files.length) void this.sendFiles(conv, files, Number(expiry.value), err);
    };
    this.pane.replaceChildren(el("h2", { "data-testid": "conversation-title" }, c.title ?? c.id), list, form);
    list.scrollTop = list.scrollHeight;
    if (document.activeElement === document.body) text.focus();
  }
}

/// What the relay says about its transports (WebTransport on its QUIC
/// port, and the certificate to pin there), or nothing when it cannot be
/// read: the page then uses the WebSocket only.
async function transports(relayUrl: string): Promise<string | undefined> {
  try {
    const url = new URL(relayUrl);
    url.protocol = "https:";
    url.pathname = "/v1/transports";
    const r = await fetch(url, { cache: "no-store" });
    return r.ok ? await r.text() : undefined;
  } catch {
    return undefined;
  }
}

async function start(record: DeviceRecord) {
  who.textContent = `${record.accountId} · ${record.deviceId}`;
  status.textContent = "Connecting…";
  app.replaceChildren(el("p", { class: "empty" }, "Connecting to the relay…"));
  let client: WebClient;
  try {
    const mls = await loadMls();
    client = await WebClient.connect(record.relayUrl, record.deviceId, record.key ?? record.seed, mls?.image, await transports(record.relayUrl), await loadFiles(), mls?.positions);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    status.textContent = "Not connected";
    const again = el("button", { type: "button" }, "Try again");
    again.addEventListener("click", () => void start(record));
    const forget = el("button", { type: "button", class: "secondary" }, "Enroll again");
    forget.addEventListener("click", async () => {
      await forgetAll();
      enrollView();
    });
    app.replaceChildren(el("div", { class: "failed" }, el("p", { class: "error", role: "alert" }, `Cannot connect: ${why}`), again, forget));
    return;
  }
  const messenger = new Messenger(client, record);
  await messenger.restore();
  messenger.mount();
  // A new device's state, kept before anything else happens.
  messenger.save();
  for (;;) {
    const json = await client.nextEvent();
    if (json === null) break;
    messenger.handle(JSON.parse(json) as HeroldEvent);
  }
}

async function main() {
  await init();
  const record = await loadDevice();
  if (record) await start(record);
  else enrollView();
}

main().catch((e) => showBanner(`The messenger failed to start: ${e instanceof Error ? e.message : String(e)}`, "error"));
