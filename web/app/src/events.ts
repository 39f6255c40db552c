// What the SDK reports, as the page reads it (herold-web's `event_json`).

export type HeroldEvent =
  | {
      type: "message";
      conversation: string;
      seq: number;
      sender_account: string;
      sender_device: string;
      sent_at_ms: number;
      expires_at_ms: number;
      text: string;
      file?: { name: string; media_type: string; size: number };
    }
  | { type: "group_changed"; conversation: string; added: string[]; removed: string[]; title: string | null }
  | { type: "joined" | "removed" | "key_received" | "restarted"; conversation: string }
  | { type: "unreadable"; conversation: string; seq: number; reason: string }
  | { type: "synced" }
  | { type: "checkpoint" }
  | { type: "disconnected"; reason: string }
  | { type: "stopped"; reason: string };

export interface ShownMessage {
  seq: number;
  from: string;
  mine: boolean;
  text: string;
  sentAtMs: number;
  expiresAtMs: number;
  file?: { name: string; mediaType: string; size: number };
}

export interface Conversation {
  id: string;
  title: string | null;
  unread: number;
  messages: ShownMessage[];
}

/// The conversations of the page, kept in arrival order of their latest
/// message; a message at a seq already shown is not shown twice.
export class Conversations {
  private byId = new Map<string, Conversation>();

  get(id: string): Conversation {
    let c = this.byId.get(id);
    if (!c) {
      c = { id, title: null, unread: 0, messages: [] };
      this.byId.set(id, c);
    }
    return c;
  }

  add(id: string, m: ShownMessage, open: boolean): boolean {
    const c = this.get(id);
    if (c.messages.some((x) => x.seq === m.seq)) return false;
    c.messages.push(m);
    c.messages.sort((a, b) => a.seq - b.seq);
    if (!open && !m.mine) c.unread += 1;
    return true;
  }

  /// Drops what has expired at `nowMs`; whether anything went.
  expire(nowMs: number): boolean {
    let any = false;
    for (const c of this.byId.values()) {
      const kept = c.messages.filter((m) => m.expiresAtMs === 0 || m.expiresAtMs > nowMs);
      if (kept.length !== c.messages.length) {
        c.messages = kept;
        any = true;
      }
    }
    return any;
  }

  /// The messages shown that carry a file, as `[conversation, seq]`.
  files(): [string, number][] {
    const out: [string, number][] = [];
    for (const c of this.byId.values()) for (const m of c.messages) if (m.file) out.push([c.id, m.seq]);
    return out;
  }

  /// What to keep across a reload.
  save(): Conversation[] {
    return [...this.byId.values()];
  }

  /// The conversations a reload kept.
  restore(saved: unknown) {
    if (!Array.isArray(saved)) return;
    for (const c of saved as Conversation[]) {
      if (typeof c?.id === "string" && Array.isArray(c.messages)) this.byId.set(c.id, c);
    }
  }

  list(): Conversation[] {
    const last = (c: Conversation) => c.messages.at(-1)?.sentAtMs ?? 0;
    return [...this.byId.values()].sort((a, b) => last(b) - last(a) || a.id.localeCompare(b.id));
  }
}

/// "in 59 s", "in 4 min", "in 2 h", "in 3 d": when a message destroys
/// itself.
export function expiresIn(expiresAtMs: number, nowMs: number): string {
  const s = Math.max(0, Math.ceil((expiresAtMs - nowMs) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.ceil(s / 60)} min`;
  if (s < 86400) return `${Math.ceil(s / 3600)} h`;
  return `${Math.ceil(s / 86400)} d`;
}

/// "512 B", "48 KB", "3.1 MB".
export function sizeText(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1_000_000) return `${Math.round(bytes / 1000)} KB`;
  return `${(bytes / 1_000_000).toFixed(1)} MB`;
}
