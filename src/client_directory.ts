/** Recent clients and their tiers, bounded, for `/clients/{id}`. */
import type { ClientDirectory } from "./plugin.ts";

/** A bounded least-recently-seen map of client id -> tier. */
export class RecentClients implements ClientDirectory {
  #tiers = new Map<string, string | undefined>();
  #max: number;

  constructor(max = 100_000) {
    this.#max = max;
  }

  seen(clientId: string, tier: string | undefined): void {
    const known = this.#tiers.get(clientId);
    if (known === tier && this.#tiers.has(clientId)) return;
    this.#tiers.delete(clientId);
    if (this.#tiers.size >= this.#max) this.#tiers.delete(this.#tiers.keys().next().value!);
    this.#tiers.set(clientId, tier);
  }

  tierOf(clientId: string): string | undefined {
    return this.#tiers.get(clientId);
  }
}
