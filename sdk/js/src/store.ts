/**
 * Where the client keeps what must outlive a page or a process: the device id and, per
 * (app, user), the last durable seq the application acked (docs/protocol.md, section 7.1).
 *
 * The seq kept is the last *acked* one, not the last received: after a reload the server
 * resends what was received but not yet processed. Within one client, reconnects resume
 * after the last seq handed to the application, which the client holds in memory.
 */

/** A string key-value store. Calls may be synchronous or return promises (IndexedDB, files). */
export interface SeqStore {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
}

/** The default store: a map, forgotten with the client's process or page. */
export class MemoryStore implements SeqStore {
  private readonly map = new Map<string, string>();

  get(key: string): string | undefined {
    return this.map.get(key);
  }

  set(key: string, value: string): void {
    this.map.set(key, value);
  }
}

/** The minimal `Storage` interface (`window.localStorage`, `sessionStorage`). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/**
 * A store in the browser's `localStorage` (or any `Storage`), under keys that start with
 * `prefix`. A full or disabled storage (private mode, quota) loses the write, never throws:
 * the server then resumes from the device's last ack it holds.
 */
export class LocalStorageStore implements SeqStore {
  private readonly storage: StorageLike;

  constructor(
    storage?: StorageLike,
    private readonly prefix = "tether:",
  ) {
    const found = storage ?? defaultStorage();
    if (!found) throw new TypeError("LocalStorageStore: no localStorage in this environment");
    this.storage = found;
  }

  get(key: string): string | null {
    try {
      return this.storage.getItem(this.prefix + key);
    } catch {
      return null;
    }
  }

  set(key: string, value: string): void {
    try {
      this.storage.setItem(this.prefix + key, value);
    } catch {
      // Quota or disabled storage: the server's own record of the device's ack remains.
    }
  }
}

/** `globalThis.localStorage`, whose mere access throws where storage is blocked (some browsers). */
function defaultStorage(): StorageLike | undefined {
  try {
    return (globalThis as { localStorage?: StorageLike }).localStorage;
  } catch {
    return undefined;
  }
}

/** The key of the last acked seq of `user` in `app`. */
export function seqKey(app: string, user: string): string {
  return `seq/${encodeURIComponent(app)}/${encodeURIComponent(user)}`;
}

/** The key of the generated device id. */
export const DEVICE_KEY = "device";

/**
 * The user a token is for, read from its `sub` claim without verifying it (the server does
 * that). Binding tokens are JWTs (section 5); undefined when this one does not decode.
 */
export function tokenSubject(token: string): string | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const text = new TextDecoder().decode(Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0)));
    const claims: unknown = JSON.parse(text);
    const sub = (claims as { sub?: unknown } | null)?.sub;
    return typeof sub === "string" && sub.length > 0 ? sub : undefined;
  } catch {
    return undefined;
  }
}
