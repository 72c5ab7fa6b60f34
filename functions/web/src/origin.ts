// Where deployments answer: each at an origin of its own, never this app's (the Rust side is
// `aic_schemas::origin`; `/v1/info`'s `serving` is the pattern, e.g. `http://*.localhost:8800`).

/** The longest deployment name a named address holds (63 − 2 − 32). */
export const MAX_NAMED = 29;

const B32 = "abcdefghijklmnopqrstuvwxyz234567";

/** An address's 20 bytes in lower-case base 32 (RFC 4648's alphabet): 32 characters. */
export function base32(address: string): string {
  const hex = address.toLowerCase().replace(/^0x/, "");
  let out = "";
  for (let c = 0; c < 40; c += 10) {
    let n = BigInt("0x" + hex.slice(c, c + 10));
    let chunk = "";
    for (let i = 0; i < 8; i++) {
      chunk = B32[Number(n & 31n)] + chunk;
      n >>= 5n;
    }
    out += chunk;
  }
  return out;
}

function at(pattern: string, label: string): string {
  return pattern.replace("*", label).replace(/\/?$/, "/");
}

/** A deployment's own address (this version alone). */
export function deploymentUrl(pattern: string, id: string): string {
  return at(pattern, id.toLowerCase());
}

/** The address of an owner's deployments of a name (it follows scales and redeploys). */
export function namedUrl(pattern: string, owner: string, name: string): string | null {
  return name.length > MAX_NAMED ? null : at(pattern, `${name}--${base32(owner)}`);
}
