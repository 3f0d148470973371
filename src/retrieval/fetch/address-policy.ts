/**
 * The SSRF guard's address rules: which resolved addresses the image fetcher may connect to.
 * Index URLs come from the internet (CC3M) or from users' galleries, so a URL (or a redirect)
 * must never make the bot talk to its own host, the LAN, or a cloud metadata service, unless
 * the operator allowlisted it (FROMAGE_FETCH_ALLOW: tests, private galleries).
 */
import dns from 'node:dns';
import net from 'node:net';

/** Ranges refused by default, with the reason reported for each. */
const REFUSED: ReadonlyArray<readonly [string, number, 'ipv4' | 'ipv6', string]> = [
  ['0.0.0.0', 8, 'ipv4', 'unspecified/"this network" address'],
  ['10.0.0.0', 8, 'ipv4', 'private address'],
  ['100.64.0.0', 10, 'ipv4', 'carrier-grade NAT address'],
  ['127.0.0.0', 8, 'ipv4', 'loopback address'],
  ['169.254.0.0', 16, 'ipv4', 'link-local address (includes cloud metadata 169.254.169.254)'],
  ['172.16.0.0', 12, 'ipv4', 'private address'],
  ['192.0.0.0', 24, 'ipv4', 'IETF protocol assignment (includes metadata services)'],
  ['192.0.2.0', 24, 'ipv4', 'documentation address'],
  ['192.88.99.0', 24, 'ipv4', 'relay anycast address'],
  ['192.168.0.0', 16, 'ipv4', 'private address'],
  ['198.18.0.0', 15, 'ipv4', 'benchmarking address'],
  ['198.51.100.0', 24, 'ipv4', 'documentation address'],
  ['203.0.113.0', 24, 'ipv4', 'documentation address'],
  ['224.0.0.0', 4, 'ipv4', 'multicast address'],
  ['240.0.0.0', 4, 'ipv4', 'reserved/broadcast address'],
  ['::', 128, 'ipv6', 'unspecified address'],
  ['::1', 128, 'ipv6', 'loopback address'],
  ['::ffff:0:0', 96, 'ipv6', 'IPv4-mapped address'],
  ['64:ff9b::', 96, 'ipv6', 'NAT64 address'],
  ['64:ff9b:1::', 48, 'ipv6', 'NAT64 address'],
  ['100::', 64, 'ipv6', 'discard address'],
  ['2001:db8::', 32, 'ipv6', 'documentation address'],
  ['2002::', 16, 'ipv6', '6to4 address'],
  ['fc00::', 7, 'ipv6', 'unique-local (private) address (includes fd00:ec2::254 metadata)'],
  ['fe80::', 10, 'ipv6', 'link-local address'],
  ['fec0::', 10, 'ipv6', 'site-local address'],
  ['ff00::', 8, 'ipv6', 'multicast address'],
];

const refusedLists = REFUSED.map(([addr, prefix, family, reason]) => {
  const list = new net.BlockList();
  list.addSubnet(addr, prefix, family);
  return { list, family, reason };
});

/** An IPv4-mapped IPv6 address (::ffff:a.b.c.d or ::ffff:xxxx:yyyy) as its IPv4 form. */
function unmapIPv4(address: string): string | undefined {
  const dotted = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (dotted) return dotted[1];
  const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
  if (hex) {
    const hi = parseInt(hex[1], 16);
    const lo = parseInt(hex[2], 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return undefined;
}

/** Why an address is refused by default, or undefined for a public address. */
export function refusalReason(address: string): string | undefined {
  const v4 = net.isIPv4(address) ? address : unmapIPv4(address);
  const family = v4 ? 'ipv4' : net.isIPv6(address) ? 'ipv6' : undefined;
  if (!family) return 'not an IP address';
  const ip = v4 ?? address;
  for (const r of refusedLists) if (r.family === family && r.list.check(ip, family)) return r.reason;
  return undefined;
}

export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}

export type Resolver = (hostname: string) => Promise<ResolvedAddress[]>;

export const systemResolver: Resolver = async (hostname) => {
  const all = await dns.promises.lookup(hostname, { all: true, verbatim: true });
  return all.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }));
};

export class RefusedAddressError extends Error {
  constructor(
    readonly host: string,
    readonly address: string,
    readonly reason: string,
  ) {
    super(`refused to connect to ${host}${host === address ? '' : ` (${address})`}: ${reason}; add it to FROMAGE_FETCH_ALLOW if this is intended`);
    this.name = 'RefusedAddressError';
  }
}

/**
 * Allowlist entries: a hostname (exact, case-insensitive), an IP address, or a CIDR range.
 * A listed hostname allows whatever it resolves to; a listed address/range allows matching
 * resolved addresses whatever the hostname.
 */
export class AddressPolicy {
  private readonly hosts = new Set<string>();
  private readonly allowed = new net.BlockList();

  constructor(allow: readonly string[] = []) {
    for (const raw of allow) {
      const entry = raw.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
      if (!entry) continue;
      const cidr = /^(.+)\/(\d{1,3})$/.exec(entry);
      if (cidr && net.isIP(cidr[1])) {
        this.allowed.addSubnet(cidr[1], Number(cidr[2]), net.isIPv4(cidr[1]) ? 'ipv4' : 'ipv6');
      } else if (net.isIP(entry)) {
        this.allowed.addAddress(entry, net.isIPv4(entry) ? 'ipv4' : 'ipv6');
        const v4 = unmapIPv4(entry);
        if (v4) this.allowed.addAddress(v4, 'ipv4');
      } else {
        this.hosts.add(entry);
      }
    }
  }

  private addressAllowed(address: string): boolean {
    const v4 = net.isIPv4(address) ? address : unmapIPv4(address);
    if (v4) return this.allowed.check(v4, 'ipv4');
    return this.allowed.check(address, 'ipv6');
  }

  /**
   * Resolves `hostname` and returns the addresses it may connect to; throws
   * RefusedAddressError when any resolved address is refused (a name that resolves to both a
   * public and a private address is treated as hostile: DNS rebinding).
   */
  async resolve(hostname: string, resolver: Resolver): Promise<ResolvedAddress[]> {
    const host = hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');
    const literal = net.isIP(host);
    const addresses: ResolvedAddress[] = literal ? [{ address: host, family: literal === 6 ? 6 : 4 }] : await resolver(host);
    if (addresses.length === 0) throw new Error(`${host} did not resolve to any address`);
    const hostAllowed = this.hosts.has(host);
    for (const a of addresses) {
      if (hostAllowed || this.addressAllowed(a.address)) continue;
      const reason = refusalReason(a.address);
      if (reason) throw new RefusedAddressError(host, a.address, reason);
    }
    return addresses;
  }
}
