/** Recent clients and their tiers, bounded, for `/clients/{id}`. */
import { rememberBounded } from "./bounded_map.ts";
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
    rememberBounded(this.#tiers, clientId, tier, this.#max);
  }

  tierOf(clientId: string): string | undefined {
    return this.#tiers.get(clientId);
  }
}
