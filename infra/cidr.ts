/**
 * How the VPC's address range is cut into subnets: pure arithmetic, shared by the network component
 * and by config validation (which rejects a VPC too small for the subnets its NAT mode needs).
 */

function ipToInt(ip: string): number {
  return ip.split(".").reduce((acc, octet) => acc * 256 + Number(octet), 0);
}

function intToIp(n: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join(".");
}

/** The smallest subnet AWS allows; plenty for a NAT gateway's one address. */
export const PUBLIC_SUBNET_PREFIX = 28;
/** Private subnets take the first six of eight equal blocks: one per zone, at most six zones. */
export const MAX_PRIVATE_SUBNETS = 6;

/** How many public /28 subnets fit in the last eighth of a VPC with this prefix length. */
export function publicSubnetRoom(prefix: number): number {
  return 2 ** (PUBLIC_SUBNET_PREFIX - prefix - 3);
}

/** Public subnets a NAT mode needs: one per zone, one in all, or none. */
export function publicSubnetsFor(nat: string, azCount: number): number {
  return nat === "onePerAz" ? azCount : nat === "single" ? 1 : 0;
}

/**
 * Private subnets are the first blocks of eight equal ones; public subnets, which hold only NAT
 * gateways, are /28s from the start of the last block, so a /16 keeps almost all of its addresses
 * for nodes and endpoints.
 */
export function subnetLayout(
  cidr: string,
  privateCount: number,
  publicCount: number,
): { private: string[]; public: string[] } {
  const [address, bits] = cidr.split("/") as [string, string];
  const prefix = Number(bits);
  const base = ipToInt(address) - (ipToInt(address) % 2 ** (32 - prefix));
  const blockSize = 2 ** (32 - prefix - 3);
  if (privateCount > MAX_PRIVATE_SUBNETS || publicCount > publicSubnetRoom(prefix)) {
    throw new Error(
      `a /${prefix} VPC holds at most ${MAX_PRIVATE_SUBNETS} private subnets and ${publicSubnetRoom(prefix)} public /${PUBLIC_SUBNET_PREFIX} subnets, asked for ${privateCount} and ${publicCount}`,
    );
  }
  const publicSize = 2 ** (32 - PUBLIC_SUBNET_PREFIX);
  return {
    private: Array.from({ length: privateCount }, (_, i) => `${intToIp(base + i * blockSize)}/${prefix + 3}`),
    public: Array.from(
      { length: publicCount },
      (_, i) => `${intToIp(base + 7 * blockSize + i * publicSize)}/${PUBLIC_SUBNET_PREFIX}`,
    ),
  };
}
