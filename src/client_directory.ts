/** Recent clients and their tiers, bounded, for `/clients/{id}`. */
import { rememberBounded } from "./bounded_map.ts";
import type { ClientDirectory } from "./plugin.ts";

interface Seen {
  /** The tier last seen on any route. */
  last: string | undefined;
  /** The tier last seen on each route (routes may give one client different tiers). */
  routes: Map<string, string | undefined>;
}

/** A bounded map of client id -> tier, per route and last seen; the least recently changed go first. */
export class RecentClients implements ClientDirectory {
  #clients = new Map<string, Seen>();
  #max: number;

  constructor(max = 100_000) {
    this.#max = max;
  }

  seen(clientId: string, tier: string | undefined, route?: string): void {
    const known = this.#clients.get(clientId);
    if (
      known && known.last === tier &&
      (route === undefined || (known.routes.get(route) === tier && known.routes.has(route)))
    ) {
      return;
    }
    const entry = known ?? { last: tier, routes: new Map() };
    entry.last = tier;
    if (route !== undefined) entry.routes.set(route, tier);
    this.#clients.delete(clientId);
    rememberBounded(this.#clients, clientId, entry, this.#max);
  }

  tierOf(clientId: string, route?: string): string | undefined {
    const known = this.#clients.get(clientId);
    return route === undefined ? known?.last : known?.routes.get(route);
  }
}
