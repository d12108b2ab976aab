import { Command } from "commander";
import { policyPackConfig, stackConfig } from "./lib/policy-config";

/**
 * `npm run policy-config -- <stack> [--advisory] > policy-config.json`, then
 * `pulumi preview --stack <stack> --policy-pack policies --policy-pack-config policy-config.json`.
 */
const program = new Command("policy-config")
  .description("Write the policy pack config for a stack, from its validated crucible:* settings")
  .argument("<stack>", "the stack whose Pulumi.<stack>.yaml to read (dev, staging, prod)")
  .option("--advisory", "report violations without failing the preview (dev stacks only)", false)
  .action((stack: string, opts: { advisory: boolean }) => {
    const config = policyPackConfig(stackConfig(stack), { advisory: opts.advisory });
    process.stdout.write(`${JSON.stringify(config, null, 2)}\n`);
  });

try {
  program.parse();
} catch (err) {
  process.stderr.write(`policy-config: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
