/** One record of EC2's spot price history. */
export interface SpotPriceRecord {
  readonly instanceType: string;
  readonly zone: string;
  /** USD per hour, as EC2 writes it (a decimal string). */
  readonly price: string;
  /** When the price took effect (ISO 8601). */
  readonly at: string;
}

/** A DescribeSpotPriceHistory answer as EC2's query API writes it. */
export function spotPriceHistory(records: readonly SpotPriceRecord[]): string {
  const items = records
    .map(
      (r) =>
        `<item><instanceType>${r.instanceType}</instanceType><productDescription>Linux/UNIX</productDescription>` +
        `<spotPrice>${r.price}</spotPrice><timestamp>${r.at}</timestamp><availabilityZone>${r.zone}</availabilityZone></item>`,
    )
    .join("");
  return (
    `<DescribeSpotPriceHistoryResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">` +
    `<requestId>r-1</requestId><spotPriceHistorySet>${items}</spotPriceHistorySet><nextToken/>` +
    `</DescribeSpotPriceHistoryResponse>`
  );
}
