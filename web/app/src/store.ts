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

function run<T>(mode: IDBTransactionMode, op: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  return open().then(
    (db) =>
      new Promise<T>((resolve, reject) => {
        const tx = db.transaction(STORE, mode);
        const req = op(tx.objectStore(STORE));
        tx.oncomplete = () => {
          db.close();
          resolve(req.result);
        };
        tx.onerror = () => {
          db.close();
          reject(tx.error);
        };
      }),
  );
}

export async function loadDevice(): Promise<DeviceRecord | undefined> {
  return (await run("readonly", (s) => s.get(KEY))) as DeviceRecord | undefined;
}

export async function saveDevice(d: DeviceRecord): Promise<void> {
  await run("readwrite", (s) => s.put(d, KEY));
}


export async function loadMls(): Promise<Uint8Array | undefined> {
  return (await run("readonly", (s) => s.get(MLS))) as Uint8Array | undefined;
}

export async function saveMls(image: Uint8Array): Promise<void> {
  await run("readwrite", (s) => s.put(image, MLS));
}

/// The keys of the files of messages still shown (`WebClient.filesImage`).
const FILES = "files";

export async function loadFiles(): Promise<Uint8Array | undefined> {
  return (await run("readonly", (s) => s.get(FILES))) as Uint8Array | undefined;
}

export async function saveFiles(image: Uint8Array): Promise<void> {
  await run("readwrite", (s) => s.put(image, FILES));
}

export async function loadConversations(): Promise<unknown> {
  return await run("readonly", (s) => s.get(CONVERSATIONS));
}

export async function saveConversations(c: unknown): Promise<void> {
  await run("readwrite", (s) => s.put(c, CONVERSATIONS));
}

export async function forgetAll(): Promise<void> {
  await run("readwrite", (s) => s.clear());
}
