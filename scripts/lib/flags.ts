/** A flag's number, checked: `what` names what is allowed. */
export function numberFlag(flag: string, what: string, test: (n: number) => boolean) {
  return (text: string): number => {
    const n = Number(text);
    if (text.trim() === "" || !Number.isFinite(n) || !test(n)) {
      throw new Error(`${flag} must be ${what}, got "${text}"`);
    }
    return n;
  };
}
