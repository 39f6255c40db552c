// The device's record in the browser's IndexedDB: its id, account, the
// relay it belongs to and its key: a non-extractable WebCrypto key (the
// page may sign with it, never read it), or its seed where the browser has
// no Ed25519 in WebCrypto. The relay has only the public key; losing this
// record means enrolling the browser again.

export interface DeviceRecord {
  deviceId: string;
  accountId: string;
  relayUrl: string;
  key?: CryptoKey;
  seed?: string;
}

const DB = "herold";
const STORE = "device";
const KEY = "self";
/// The MLS state's database image, and the page's conversations.
const MLS = "mls";
const CONVERSATIONS = "conversations";

function open(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/// `op` on the object store in one transaction, settled when the
/// transaction is: either all of its writes happened or none.
function transact<T>(mode: IDBTransactionMode, op: (s: IDBObjectStore) => T): Promise<T> {
  return open().then(
    (db) =>
      new Promise<T>((resolve, reject) => {
        const tx = db.transaction(STORE, mode);
        const result = op(tx.objectStore(STORE));
        const failed = () => {
          db.close();
          reject(tx.error);
        };
        tx.oncomplete = () => {
          db.close();
          resolve(result);
        };
        tx.onerror = failed;
        tx.onabort = failed;
      }),
  );
}

function run<T>(mode: IDBTransactionMode, op: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  return transact(mode, op).then((req) => req.result);
}

export async function loadDevice(): Promise<DeviceRecord | undefined> {
  return (await run("readonly", (s) => s.get(KEY))) as DeviceRecord | undefined;
}

export async function saveDevice(d: DeviceRecord): Promise<void> {
  await run("readwrite", (s) => s.put(d, KEY));
}


/// The MLS state as of its last checkpoint, and the positions it covers.
export interface KeptMls {
  image: Uint8Array;
  positions: string;
}

export async function loadMls(): Promise<KeptMls | undefined> {
  const kept = await run("readonly", (s) => s.get(MLS));
  // Before checkpoints the image alone was kept: from there the relay
  // delivers what it has not been told arrived.
  if (kept instanceof Uint8Array) return { image: kept, positions: "{}" };
  return kept as KeptMls | undefined;
}

/// Keeps what the page has in one transaction: the MLS state (when a new
/// checkpoint came), the conversations shown and their files' keys; either
/// all of it or none.
export function saveState(mls: KeptMls | undefined, conversations: unknown, files: Uint8Array): Promise<void> {
  return transact("readwrite", (s) => {
    if (mls) s.put(mls, MLS);
    s.put(conversations, CONVERSATIONS);
    s.put(files, FILES);
  });
}

/// The keys of the files of messages still shown (`WebClient.filesImage`).
const FILES = "files";

export async function loadFiles(): Promise<Uint8Array | undefined> {
  return (await run("readonly", (s) => s.get(FILES))) as Uint8Array | undefined;
}

export async function loadConversations(): Promise<unknown> {
  return await run("readonly", (s) => s.get(CONVERSATIONS));
}

export async function forgetAll(): Promise<void> {
  await run("readwrite", (s) => s.clear());
}
